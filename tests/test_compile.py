"""train.compile: what each task compiles has no graph break, and a compiled training run gives eager's losses."""
import json
import shutil

import numpy as np
import pytest
import torch
import torch._dynamo

from maetransfer.cls.model import build_classifier
from maetransfer.config import load_config
from maetransfer.det.model import build_mask_rcnn
from maetransfer.seg.segmentor import build_segmentor
from pretrain.main import build_model


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _mae():
    cfg = load_config("configs/pretrain/demo.yaml", ["model.img_size=32", "model.depth=2", "model.decoder_depth=1"])
    return build_model(cfg.model), (torch.randn(2, 3, 32, 32), 0.75)


def _classifier():
    cfg = load_config("configs/cls/demo.yaml", ["model.depth=2"])
    return build_classifier(cfg.model, 6, 32), (torch.randn(2, 3, 32, 32),)


def _segmentor():
    cfg = load_config("configs/seg/demo.yaml", ["model.depth=2", "model.out_indices=[0,1,1,1]"])
    labels = torch.randint(0, 6, (2, 32, 32))
    labels[0, :4] = 255  # ignored pixels
    return build_segmentor(cfg.model), (torch.randn(2, 3, 32, 32), labels)


def _detector_backbone():
    cfg = load_config("configs/det/demo.yaml", ["model.depth=2", "model.global_blocks=[1]"])
    return build_mask_rcnn(cfg, 6).backbone, (torch.randn(2, 3, 128, 128),)


@pytest.mark.parametrize("build", [_mae, _classifier, _segmentor, _detector_backbone])
def test_what_train_compile_compiles_is_one_graph(build):
    """The training forward (with the loss where the model computes it) is captured whole: a graph break would run
    eager Python between compiled pieces and cost the speed-up."""
    torch.manual_seed(0)
    model, args = build()
    model.train()
    explanation = torch._dynamo.explain(model)(*args)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
    assert explanation.graph_count == 1


def _detection_batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 96, generator=g) * 255, torch.rand(3, 112, 128, generator=g) * 255]
    square = [[10.0, 10.0, 10.0, 60.0, 70.0, 60.0, 70.0, 10.0]]
    triangle = [[20.0, 90.0, 80.0, 100.0, 40.0, 40.0]]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 70.0, 60.0], [20.0, 40.0, 80.0, 100.0]]),
                "labels": torch.tensor([1, 4]),
                "masks": [[np.array(p) for p in square], [np.array(p) for p in triangle]]} for _ in images]
    return images, targets


def test_detector_compiles_its_backbone_only_and_keeps_its_losses():
    cfg = load_config("configs/det/demo.yaml", ["model.depth=2", "model.global_blocks=[1]"])
    torch.manual_seed(0)
    eager = build_mask_rcnn(cfg, 6).train()
    compiled = build_mask_rcnn(cfg, 6).train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile(backend="aot_eager")  # graph capture and autograd as inductor sees them, without codegen
    assert compiled.backbone._compiled_call_impl is not None and compiled._compiled_call_impl is None
    assert compiled.roi_heads._compiled_call_impl is None and list(compiled.state_dict()) == list(eager.state_dict())
    losses = []
    for model in (eager, compiled):
        torch.manual_seed(1)  # the RPN and RoI samplers draw from torch's generator
        losses.append({k: float(v) for k, v in model(*_detection_batch()).items()})  # losses and diagnostics
    assert losses[0].keys() == losses[1].keys()
    for key in losses[0]:
        assert losses[1][key] == pytest.approx(losses[0][key], rel=1e-5, abs=1e-7), key


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="inductor compiles C++ kernels on CPU and no C++ compiler is installed")
def test_compiled_pretraining_steps_give_the_eager_losses(tmp_path):
    """The engine with train.compile=true (inductor, default mode) vs eager on a tiny MAE: the same loss at every
    iteration, so the compiled forward, backward and the updates they drive equal eager's. Inductor's own random
    numbers are switched to eager's (fallback_random) so that both draw the same masks."""
    from maetransfer.engine import Trainer
    from maetransfer.optim import no_decay_on, param_groups

    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    losses = {}
    with torch._inductor.config.patch(fallback_random=True):
        for compile_ in ("false", "true"):
            cfg = load_config("configs/pretrain/demo.yaml", [
                "model.img_size=32", "model.depth=1", "model.decoder_embed_dim=32", "model.decoder_depth=1",
                "train.batch_size=4", "train.epochs=2", "train.num_workers=0", "train.log_period=1",
                "train.checkpoint_period=0", f"train.compile={compile_}", f"train.output_dir={tmp_path / compile_}"])
            torch.manual_seed(0)
            model = build_model(cfg.model)
            trainer = Trainer(cfg, model, param_groups(model, 0.05, no_decay=no_decay_on(model.no_weight_decay())),
                              list(images), lambda m, x, device: (m(x, 0.75)[0], {}))
            trainer.fit()
            assert (model._compiled_call_impl is not None) == (compile_ == "true")
            lines = (tmp_path / compile_ / "log.jsonl").read_text().splitlines()
            losses[compile_] = [json.loads(line)["loss"] for line in lines]
    assert len(losses["true"]) == 4
    np.testing.assert_allclose(losses["true"], losses["false"], rtol=1e-5)
