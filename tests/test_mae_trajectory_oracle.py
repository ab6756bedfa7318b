"""MAE pretraining and fine-tuning trajectories against the official engines (facebookresearch/mae, run from source).

The official `engine_pretrain.train_one_epoch` / `engine_finetune.train_one_epoch` train their own models
(`models_mae`, `models_vit` with `util.lr_decay.param_groups_lrd`), optimizers and `NativeScalerWithGradNormCount`
as `main_pretrain.py` / `main_finetune.py` build them, on the micro-batches this project's trainer drew, from this
project's initial weights, with torch's RNG set to the state ours had at each micro-batch (so both draw the same
masking noise and drop-path masks). Checked at every micro-batch: the loss, and every parameter's lr and weight decay
(by name); at the end: every weight.

The official code is read from $MAE_OFFICIAL_SRC (default /work/mae-official; `git archive` of
github.com/facebookresearch/mae); the tests skip where it is absent. It targets torch 1.8 / timm 0.3.2 / NumPy < 1.24;
the `official` fixture shims the few names that moved, and nothing of its training logic.
"""
import math
import os
import sys
import types
from argparse import Namespace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from maetransfer.config import load_config
from maetransfer.engine import Hook, run_task

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = Path(os.environ.get("MAE_OFFICIAL_SRC", "/work/mae-official"))
OFFICIAL_MODULES = {"util", "models_mae", "models_vit", "engine_pretrain", "engine_finetune"}

pytestmark = pytest.mark.skipif(not (OFFICIAL / "engine_pretrain.py").is_file(),
                                reason=f"the official MAE source is not at {OFFICIAL} (set MAE_OFFICIAL_SRC to a "
                                       "checkout of github.com/facebookresearch/mae)")

LOSS_RTOL = 1e-4  # every loss, relative
WEIGHT_RTOL = 1e-4  # every final weight: |ours - official| <= 1e-4 * max |official| of its tensor


@pytest.fixture
def one_thread():
    """Both runs on one CPU thread (train.num_threads=1 sets it for the process): fast on a busy machine, and the
    figures printed do not depend on the core count. The caller's setting is restored."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def official(monkeypatch):
    """The official modules, imported from source on today's torch, timm and NumPy."""
    # torch 2.0 removed torch._six; util/misc.py takes only `inf` from it.
    six = types.ModuleType("torch._six")
    six.inf = math.inf
    monkeypatch.setitem(sys.modules, "torch._six", six)
    # NumPy 1.24 removed the np.float alias that util/pos_embed.py builds its sin-cos tables with.
    monkeypatch.setattr(np, "float", float, raising=False)
    # Both engines call torch.cuda.synchronize() after every step, which fails without a GPU; there is nothing to wait
    # for on the CPU.
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.syspath_prepend(str(OFFICIAL))
    import engine_finetune
    import engine_pretrain
    import models_mae
    import models_vit
    import util.lr_decay
    import util.misc

    # timm >= 0.9 Blocks take no qk_scale (the official None meant timm's default head_dim ** -0.5).
    timm_block = models_mae.Block
    monkeypatch.setattr(models_mae, "Block", lambda *args, qk_scale=None, **kwargs: timm_block(*args, **kwargs))
    # timm 0.3.2's VisionTransformer.forward was head(forward_features(x)); today's timm pools and applies fc_norm
    # again in forward_head, after models_vit's forward_features has already pooled and normalised.
    monkeypatch.setattr(models_vit.VisionTransformer, "forward", lambda self, x: self.head(self.forward_features(x)))
    yield Namespace(engine_pretrain=engine_pretrain, engine_finetune=engine_finetune, models_mae=models_mae,
                    models_vit=models_vit, lr_decay=util.lr_decay, misc=util.misc)
    for name in [m for m in sys.modules if m.split(".")[0] in OFFICIAL_MODULES]:
        del sys.modules[name]  # generic names (`util`) must not shadow anything imported later


def optimizer_settings(optimizer, names):
    """{parameter name: (lr, weight decay)} of an optimizer as it stands."""
    return {names[p]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recorder(Hook):
    """Instruments this project's run: at every micro-batch that the trainer gives its loss, the batch, the epoch,
    torch's RNG state (which masking and drop path draw from), every parameter's lr and weight decay, the loss and the
    model's outputs; the initial and the final weights."""

    def __init__(self):
        self.steps = []

    def before_train(self, trainer):
        model = trainer.model_without_ddp
        self.initial = weights(model)
        names = {p: n for n, p in model.named_parameters()}
        inner = trainer.loss_fn

        def loss_fn(model_, batch, device):
            step = {"batch": batch, "epoch": trainer.epoch, "rng": torch.get_rng_state(),
                    "settings": optimizer_settings(trainer.optimizer, names)}
            handle = model.register_forward_hook(lambda m, i, out: step.update(output=out))
            try:
                loss, logs = inner(model_, batch, device)
            finally:
                handle.remove()
            self.steps.append({**step, "loss": loss.item()})
            return loss, logs

        trainer.loss_fn = loss_fn

    def after_train(self, trainer):
        self.final = weights(trainer.model_without_ddp)


class Replay:
    """One epoch of the recorded micro-batches as the official engine's data loader. Before it hands out a batch it
    sets torch's RNG to the state ours had at that micro-batch: the official model then draws the same masking noise
    (models_mae.random_masking: torch.rand(N, L)) and drop-path masks, as nothing else between the loader and the
    forward draws random numbers."""

    def __init__(self, steps, as_pair):
        self.steps, self.as_pair = steps, as_pair

    def __len__(self):
        return len(self.steps)

    def __iter__(self):
        for step in self.steps:
            torch.set_rng_state(step["rng"])
            yield self.as_pair(step["batch"])


def run_official(train_one_epoch, model, optimizer, steps, as_pair, args, **kwargs):
    """The official epochs over our recorded micro-batches; per micro-batch the optimizer settings at the forward
    and the model's output."""
    names = {p: n for n, p in model.named_parameters()}
    seen = []
    model.register_forward_pre_hook(lambda m, i: seen.append({"settings": optimizer_settings(optimizer, names)}))
    model.register_forward_hook(lambda m, i, out: seen[-1].update(output=out))
    for epoch in range(args.epochs):
        train_one_epoch(model=model, data_loader=Replay([s for s in steps if s["epoch"] == epoch], as_pair),
                        optimizer=optimizer, device=torch.device("cpu"), epoch=epoch, args=args, **kwargs)
    return seen


def relative(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def compare(ours, official_steps, official_losses, official_final):
    """Every loss within LOSS_RTOL, every parameter's weight decay equal and lr equal to rounding (the two schedules
    compute it in other orders), every final weight within WEIGHT_RTOL; returns the largest relative differences of
    lr, loss and final weights."""
    assert len(ours.steps) == len(official_steps) == len(official_losses)
    worst_lr = 0.0
    for i, (mine, theirs, loss) in enumerate(zip(ours.steps, official_steps, official_losses)):
        assert mine["settings"].keys() == theirs["settings"].keys()
        for name, (lr, wd) in mine["settings"].items():
            ref_lr, ref_wd = theirs["settings"][name]
            assert wd == ref_wd, f"micro-batch {i}: {name} has weight decay {wd}, official {ref_wd}"
            assert lr == pytest.approx(ref_lr, rel=1e-12, abs=1e-18), \
                f"micro-batch {i}: {name} has lr {lr}, official {ref_lr}"
            worst_lr = max(worst_lr, relative(lr, ref_lr) if ref_lr else 0.0)
        assert relative(mine["loss"], loss) <= LOSS_RTOL, f"micro-batch {i}: loss {mine['loss']}, official {loss}"
    worst_weight = 0.0
    for name, ref in official_final.items():
        diff = (ours.final[name] - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)
        assert diff <= WEIGHT_RTOL, f"final {name}: relative difference {diff:.2e}"
        worst_weight = max(worst_weight, diff)
    worst_loss = max(relative(m["loss"], loss) for m, loss in zip(ours.steps, official_losses))
    return worst_lr, worst_loss, worst_weight


def report(what, micro_batches, worst_lr, worst_loss, worst_weight):
    """The figures docs/pretraining.md and docs/classification.md quote (pytest -s shows them)."""
    print(f"\n{what}: {micro_batches} micro-batches; largest relative difference of a parameter's lr {worst_lr:.1e}, "
          f"of a loss {worst_loss:.1e}, of a final weight tensor {worst_weight:.1e}")


# -- pretraining ---------------------------------------------------------------------------------------------------
MAE = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32, decoder_depth=2,
           decoder_num_heads=4)
PRETRAIN = dict(epochs=26, batch_size=4, accum_iter=2, blr=0.05, warmup_epochs=3, weight_decay=0.05, mask_ratio=0.75)


def test_pretraining_follows_the_official_engine(official, one_thread, image_dir, tmp_path):
    """52 updates (104 micro-batches: accum_iter 2) of tools/pretrain_mae.py's task against
    engine_pretrain.train_one_epoch with AdamW(0.9, 0.95) over timm's add_weight_decay groups, norm-pix loss."""
    p = PRETRAIN
    cfg = load_config(ROOT / "configs/pretrain/base.yaml", [
        f"data.root={image_dir}", "data.num_preview=0", *[f"model.{k}={v}" for k, v in MAE.items()],
        f"model.mask_ratio={p['mask_ratio']}", "model.norm_pix_loss=true", "train.amp=none", "train.num_workers=0",
        *[f"train.{k}={p[k]}" for k in ("epochs", "batch_size", "accum_iter", "blr", "warmup_epochs", "weight_decay")],
        "train.min_lr=0", "train.num_threads=1", "train.checkpoint_period=1000",
        f"train.output_dir={tmp_path / 'ours'}"])
    from pretrain.main import PretrainingTask
    ours = Recorder()
    run_task(PretrainingTask(cfg), hooks=[ours])
    assert len(ours.steps) == p["epochs"] * 4  # 16 images / batch 4: 4 micro-batches = 2 updates an epoch

    model = official.models_mae.MaskedAutoencoderViT(mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                                                     norm_pix_loss=True, **MAE)
    model.load_state_dict(ours.initial)
    # main_pretrain.py: optim_factory.add_weight_decay(model, args.weight_decay) -- timm 0.3.2's name of today's
    # param_groups_weight_decay (same rule: no decay on 1-D tensors and biases, nothing skipped by name).
    from timm.optim import param_groups_weight_decay
    args = Namespace(**p, lr=p["blr"] * p["batch_size"] * p["accum_iter"] / 256, min_lr=0.0)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, p["weight_decay"]), lr=args.lr, betas=(0.9, 0.95))
    losses = []  # read at the forward: the engine then divides the loss tensor by accum_iter in place
    model.register_forward_hook(lambda m, i, out: losses.append(out[0].item()))
    seen = run_official(official.engine_pretrain.train_one_epoch, model, optimizer, ours.steps,
                        lambda imgs: (imgs, torch.zeros(len(imgs))), args,
                        loss_scaler=official.misc.NativeScalerWithGradNormCount())

    for i, (mine, theirs) in enumerate(zip(ours.steps, seen)):
        assert torch.equal(mine["output"][2], theirs["output"][2]), f"micro-batch {i}: other masks"
    report("pretraining", len(seen), *compare(ours, seen, losses, weights(model)))


# -- fine-tuning ---------------------------------------------------------------------------------------------------
VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
FINETUNE = dict(epochs=26, batch_size=4, accum_iter=2, blr=0.05, warmup_epochs=3, weight_decay=0.05, layer_decay=0.75,
                min_lr=1e-6)


def test_finetuning_follows_the_official_engine(official, one_thread, tmp_path):
    """52 updates (accum_iter 2) of tools/train_cls.py's task (layer decay, drop path 0.1, label smoothing 0.1, mixup
    off) against engine_finetune.train_one_epoch with models_vit and util.lr_decay.param_groups_lrd."""
    from maetransfer.cls.train import ClassificationTask
    from maetransfer.data.cls import write_demo_data
    from timm.loss import LabelSmoothingCrossEntropy

    p = FINETUNE
    write_demo_data(tmp_path / "data", n_train=16, n_val=4, size=32, seed=1)
    cfg = load_config(ROOT / "configs/cls/demo.yaml", [
        f"data.root={tmp_path / 'data'}", "data.demo=false", "model.arch=vit_micro",
        *[f"model.{k}={v}" for k, v in VIT.items()], "model.drop_path_rate=0.1", "aug.mixup=0", "aug.cutmix=0",
        "aug.smoothing=0.1", "train.amp=none", "train.num_workers=0", "train.init_checkpoint=",
        *[f"train.{k}={v}" for k, v in p.items()], "train.num_threads=1", "train.checkpoint_period=1000",
        "train.eval_period=0", "eval.num_workers=0", f"train.output_dir={tmp_path / 'ours'}"])
    ours = Recorder()
    run_task(ClassificationTask(cfg), hooks=[ours])
    assert len(ours.steps) == p["epochs"] * 4  # 16 images / batch 4: 4 micro-batches = 2 updates an epoch

    model = official.models_vit.VisionTransformer(global_pool=True, mlp_ratio=4, qkv_bias=True, num_classes=6,
                                                  norm_layer=partial(nn.LayerNorm, eps=1e-6), drop_path_rate=0.1,
                                                  **VIT)
    model.load_state_dict(ours.initial)
    # main_finetune.py's optimizer, criterion (mixup off, smoothing > 0) and scaler
    groups = official.lr_decay.param_groups_lrd(model, p["weight_decay"], no_weight_decay_list=model.no_weight_decay(),
                                                layer_decay=p["layer_decay"])
    args = Namespace(**p, lr=p["blr"] * p["batch_size"] * p["accum_iter"] / 256)
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    smoothing = LabelSmoothingCrossEntropy(smoothing=0.1)
    losses = []

    def criterion(outputs, targets):
        loss = smoothing(outputs, targets)
        losses.append(loss.item())
        return loss

    seen = run_official(official.engine_finetune.train_one_epoch, model, optimizer, ours.steps, tuple, args,
                        criterion=criterion, loss_scaler=official.misc.NativeScalerWithGradNormCount(), max_norm=None,
                        mixup_fn=None)
    report("fine-tuning", len(seen), *compare(ours, seen, losses, weights(model)))
    # Layer decay is in effect in the official run (mae#216 reads it as ignored): adjust_learning_rate multiplies each
    # group's lr_scale in at every iteration, so block 0 trains at layer_decay ** 2 of the head's lr (depth 2).
    lrs = seen[-1]["settings"]
    assert lrs["blocks.0.attn.qkv.weight"][0] == pytest.approx(lrs["head.weight"][0] * p["layer_decay"] ** 2)
