"""tools/train_cls.py end to end on tiny data: train + eval, eval-only of our and of official-layout checkpoints."""
import json
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torchvision import transforms as T

from maetransfer.cls import train as cls_train
from maetransfer.data.cls import build_dataset, write_demo_data
from maetransfer.models import build_vit
from tool_modules import load_tool

ROOT = Path(__file__).resolve().parent.parent
train_cls = load_tool("train_cls")

TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
        "model.img_size=32", "train.epochs=1", "train.batch_size=8", "train.warmup_epochs=0", "eval.batch_size=8",
        "train.num_workers=0", "train.log_period=1", "train.init_checkpoint="]  # never the demo pretraining


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    write_demo_data(root / "data", n_train=16, n_val=8, size=32, seed=1)
    # An official-layout pretrained encoder {'model': ...} at 64 px: pos_embed 8x8 is interpolated to the 4x4 grid.
    encoder = build_vit("vit_micro", patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=64)
    torch.save({"model": encoder.state_dict()}, root / "encoder.pth")
    return root


def _run(data, out, *extra):
    return train_cls.main(["--config", str(ROOT / "configs/cls/demo.yaml"), "--output-dir", str(out),
                           f"data.root={data / 'data'}", "data.demo=false", *TINY, *extra])


def test_finetune_then_eval_only_reproduces_the_metrics(data, tmp_path):
    out = tmp_path / "ft"
    metrics = _run(data, out, f"train.init_checkpoint={data / 'encoder.pth'}", "aug.mixup=0.8", "aug.cutmix=1.0",
                   "aug.reprob=0.25")  # the full official train recipe
    written = json.loads((out / "metrics.json").read_text())
    assert written["num_images"] == 8 and set(written) >= {"top1", "top5", "mean_class_acc", "loss"}
    assert written["top1"] == pytest.approx(metrics["top1"])
    for name in ("config.yaml", "checkpoint.pth", "log.jsonl", "per_class_accuracy.csv"):
        assert (out / name).is_file(), name
    assert len((out / "per_class_accuracy.csv").read_text().splitlines()) == 1 + 6

    again = _run(data, tmp_path / "eval", "--eval-only", "--checkpoint", str(out / "checkpoint.pth"))
    assert again["top1"] == pytest.approx(written["top1"]) and again["loss"] == pytest.approx(written["loss"])


def test_linear_probe_leaves_the_pretrained_encoder_untouched(data, tmp_path):
    out = tmp_path / "lin"
    _run(data, out, f"train.init_checkpoint={data / 'encoder.pth'}", "model.mode=linear", "model.global_pool=token",
         "train.optimizer=lars", "train.blr=0.1", "train.weight_decay=0", "aug.mixup=0", "aug.cutmix=0",
         "aug.smoothing=0", "aug.auto_augment=", "aug.reprob=0")
    trained = torch.load(out / "checkpoint.pth", weights_only=True)["model"]
    init = torch.load(data / "encoder.pth", weights_only=True)["model"]
    for key in ("blocks.1.attn.qkv.weight", "patch_embed.proj.weight", "cls_token", "norm.weight"):
        assert torch.equal(trained[key], init[key]), key
    assert trained["head.0.num_batches_tracked"] == 2  # 16 images / batch 8


def test_eval_only_of_an_official_finetuned_checkpoint(data, tmp_path):
    """A mae_finetuned_vit_*.pth layout ({'model': timm ViT with fc_norm + head}) gives the same top-1 as running
    that timm model over the val images with the official eval transform."""
    torch.manual_seed(0)
    ref = TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=6, global_pool="avg",
                  norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    nn.init.normal_(ref.head.weight, std=1.0)  # spread the predictions over several classes
    torch.save({"model": ref.state_dict()}, tmp_path / "mae_finetuned.pth")
    metrics = _run(data, tmp_path / "out", "--eval-only", "--checkpoint", str(tmp_path / "mae_finetuned.pth"))

    from maetransfer.config import load_config
    cfg = load_config(ROOT / "configs/cls/demo.yaml", [f"data.root={data / 'data'}"])
    val = build_dataset(cfg.data, "val")
    official_eval = T.Compose([T.Resize(int(32 / 0.875), interpolation=T.InterpolationMode.BICUBIC),
                               T.CenterCrop(32), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                                           (0.229, 0.224, 0.225))])
    with torch.no_grad():
        images = torch.stack([official_eval(val[i][0]) for i in range(len(val))])
        pred = ref(images).argmax(1)
    expected = 100.0 * (pred == torch.as_tensor(val.targets)).float().mean().item()
    assert metrics["top1"] == pytest.approx(expected)


def test_eval_only_refuses_an_encoder_without_head(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run(data, tmp_path / "out", "--eval-only", "--checkpoint", str(data / "encoder.pth"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "encoder.pth" in err and "no classification head" in err


def test_eval_only_names_a_head_of_another_mode(data, tmp_path, capsys):
    out = tmp_path / "ft"
    _run(data, out, "train.max_iters=1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        _run(data, tmp_path / "eval", "--eval-only", "--checkpoint", str(out / "checkpoint.pth"), "model.mode=linear",
             "model.global_pool=token")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {out / 'checkpoint.pth'}: ") and err.endswith(
        "it holds a fine-tuning head: evaluate with model.mode=finetune")


def test_a_checkpoint_with_arbitrary_objects_needs_the_explicit_unsafe_flag(data, tmp_path, capsys):
    """Official training files hold `args`; a file with any other pickled object (here a pathlib.Path) is refused by
    weights_only loading with one line, and read only after --unsafe-load."""
    ckpt = torch.load(data / "encoder.pth", weights_only=True)
    torch.save({**ckpt, "extra": Path("anything")}, tmp_path / "odd.pth")
    init = f"train.init_checkpoint={tmp_path / 'odd.pth'}"
    with pytest.raises(SystemExit) as exit_info:
        _run(data, tmp_path / "refused", init, "train.max_iters=1")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert "odd.pth" in err and "--unsafe-load" in err and not (tmp_path / "refused" / "checkpoint.pth").exists()
    _run(data, tmp_path / "allowed", init, "train.max_iters=1", "--unsafe-load")
    assert (tmp_path / "allowed" / "checkpoint.pth").is_file()


def test_ema_weights_are_reported_and_reproduced_by_eval_only(data, tmp_path):
    out = tmp_path / "ema"
    metrics = _run(data, out, "train.ema_decay=0.5", "train.max_iters=2")
    plain = torch.load(out / "checkpoint.pth", weights_only=True)
    assert "model_ema" in plain["hooks"]["WeightAverage"] and (out / "model_ema.pth").is_file()
    again = _run(data, tmp_path / "eval", "--eval-only", "--checkpoint", str(out / "model_ema.pth"))
    assert again["loss"] == pytest.approx(metrics["loss"]) and again["top1"] == pytest.approx(metrics["top1"])


@pytest.mark.parametrize("train_amp, eval_amp, expected", [("bf16", None, torch.float32),
                                                           ("none", "bf16", torch.bfloat16)])
def test_evaluation_runs_in_fp32_unless_eval_amp_opts_in(data, tmp_path, monkeypatch, train_amp, eval_amp, expected):
    """Released fine-tuned checkpoints give their published numbers in fp32: evaluation during training and with
    --eval-only runs without autocast whatever train.amp is, and under bf16 autocast only with eval.amp=bf16."""
    seen = []

    def build_recording(*args, **kwargs):  # the dtype of the logits of every evaluation forward
        model = build_classifier(*args, **kwargs)
        model.register_forward_hook(lambda m, inputs, out: None if m.training else seen.append(out.dtype))
        return model

    build_classifier = cls_train.build_classifier
    monkeypatch.setattr(cls_train, "build_classifier", build_recording)
    opt_in = [f"eval.amp={eval_amp}"] if eval_amp else []
    _run(data, tmp_path / "ft", f"train.amp={train_amp}", "train.max_iters=1", *opt_in)
    assert seen and set(seen) == {expected}
    seen.clear()
    _run(data, tmp_path / "eval", "--eval-only", "--checkpoint", str(tmp_path / "ft" / "checkpoint.pth"), *opt_in)
    assert seen and set(seen) == {expected}
