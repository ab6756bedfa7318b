"""A UperNet training run against mmseg's own trainer: mmengine's `Runner.train()` (IterBasedTrainLoop) with the
mmseg MAE config's `optim_wrapper` (OptimWrapper, AdamW, mmseg's LayerDecayOptimizerConstructor) and
`param_scheduler` (LinearLR warm-up, then PolyLR), the recipe shortened to 60 iterations, against this project's
Trainer with the segmentation task's parameter groups. Both start from the same weights (ours, written in mmseg's
layout by the project's converter) and see the same batches: our run's augmented, normalised samples are recorded
and replayed to mmseg (its data preprocessor then only stacks them).

Drop path and head dropout are off on both sides: their random masks come from different calls on torch's generator
in the two code bases, so they cannot be drawn alike. Training is fp32: the config's fp16 (AmpOptimWrapper) needs CUDA.

Final weights are held to mmseg's own reproducibility: AdamW turns rounding into steps of the order of the lr wherever
a gradient vanishes in exact arithmetic (conv biases before BatchNorm, the key bias of attention, BatchNorm over two
pooled values), so mmseg run with another thread count differs from itself by more than 1e-4 of some tensors.

mmseg 1.2.2 runs in its own environment (docs/segmentation.md); skipped without it.
Rerun the comparison with its figures: `python tests/test_seg_trajectory_oracle.py` there."""
import contextlib
import copy
import io
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ITERS = 60
SNAPSHOT = 10  # iterations between the weights kept for the figures
# The ViT-B recipe (configs/seg/base.yaml: AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05, layer decay 0.65, linear
# warm-up from 1e-6 then poly(1.0) to 0, counted as mmengine does) on a tiny ViT and 64 px crops of demo scenes
# through the full ADE20K training pipeline, with 10 warm-up iterations in the run's 60
RECIPE = ["model.arch=vit_micro", "model.patch_size=8", "model.img_size=64", "model.out_indices=null",
          "model.channels=32", "model.aux_channels=16", "model.num_classes=6", "model.norm=BN",
          "model.drop_path_rate=0.0", "model.dropout=0.0", "data.scale=[256,64]", "data.crop_size=[64,64]",
          "data.class_names=[disc,square,triangle,ring,cross,bar]", "train.init_checkpoint=",
          "train.warmup_iters=10", f"train.max_iters={ITERS}", "train.batch_size=2", "train.num_workers=0",
          "train.amp=none"]


def in_mmseg_names(state, folder):
    """A state dict of our segmentor in mmseg's names, through the project's converter (beit2mmseg layout for the
    backbone and the neck; the heads' names are mmseg's already)."""
    from maetransfer.checkpoint import read_checkpoint, to_mmseg

    torch.save({"model": state}, folder / "state.pth")
    ckpt = read_checkpoint(folder / "state.pth")
    converted = to_mmseg(ckpt)["state_dict"]
    converted.update({k: v for k, v in ckpt.other.items() if k.startswith(("decode_head.", "auxiliary_head."))})
    converted.update({k: v for k, v in ckpt.other.items() if k.startswith("neck.")})
    return converted


def train_ours(cfg, folder):
    """Our trainer with the task's model, parameter groups and loss; returns the initial state, the model, its
    record (each update's losses and each parameter's (lr, weight decay); the weights every SNAPSHOT updates) and
    the batches it trained on."""
    from maetransfer.engine import Hook
    from maetransfer.engine.trainer import Trainer
    from maetransfer.seg.train import SegmentationTask

    class Record(Hook):
        def __init__(self, names):
            self.names, self.losses, self.hyper, self.states = names, [], [], []

        def after_update(self, trainer, record):
            self.losses.append({k: float(v) for k, v in record.items() if "loss" in k})
            self.hyper.append({self.names[id(p)]: (g["lr"], g["weight_decay"])
                               for g in trainer.optimizer.param_groups for p in g["params"]})
            if trainer.iter % SNAPSHOT == 0:
                self.states.append(copy.deepcopy(trainer.model_without_ddp.state_dict()))

    task = SegmentationTask(cfg)
    torch.manual_seed(0)
    model = task.build(eval_only=False)
    initial = copy.deepcopy(model.state_dict())
    batches, loss = [], task.loss_fn()

    def recording_loss(model, batch, device):
        batches.append(copy.deepcopy(batch))
        return loss(model, batch, device)

    trainer = Trainer(cfg, model, task.param_groups(model), task.train_set, recording_loss, str(folder / "ours"),
                      device=torch.device("cpu"), **task.trainer_options())
    record = Record({id(p): n for n, p in model.named_parameters()})
    trainer.register_hooks([record])
    trainer.fit()
    return initial, model, record, batches


def mmseg_config(cfg):
    """mmseg's MAE UperNet config (configs/mae, ViT-B, 160k) set to the run's tiny model and shortened recipe."""
    import mmseg
    from mmengine.config import Config

    from maetransfer.models import vit_out_indices
    from maetransfer.sizes import VIT_SIZES

    path = Path(mmseg.__file__).parent / ".mim/configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py"
    if not path.is_file():
        pytest.skip("mmseg's configs/mae not found in the installed package")
    mm, m, t = Config.fromfile(str(path)), cfg.model, cfg.train
    size, (width, depth, heads) = int(m.img_size), (VIT_SIZES[m.arch][k] for k in ("embed_dim", "depth", "num_heads"))
    bn = dict(type="BN", requires_grad=True)  # SyncBN on one process
    # our samples arrive normalised and padded: the preprocessor keeps only its stacking
    mm.model.data_preprocessor.update(mean=None, std=None, bgr_to_rgb=False, size=tuple(cfg.data.crop_size))
    mm.model.backbone.update(img_size=(size, size), patch_size=int(m.patch_size), embed_dims=width, num_layers=depth,
                             num_heads=heads, drop_path_rate=float(m.drop_path_rate),
                             out_indices=vit_out_indices(depth))  # our model.out_indices=null
    mm.model.neck.update(embed_dim=width, norm_cfg=bn)
    mm.model.decode_head.update(in_channels=[width] * 4, channels=int(m.channels), num_classes=int(m.num_classes),
                                dropout_ratio=float(m.dropout), norm_cfg=bn)
    mm.model.auxiliary_head.update(in_channels=width, channels=int(m.aux_channels), num_classes=int(m.num_classes),
                                   dropout_ratio=float(m.dropout), norm_cfg=bn)
    mm.model.pretrained = None
    mm.optim_wrapper.paramwise_cfg.num_layers = depth
    warmup, poly = mm.param_scheduler
    warmup.end = poly.begin = int(t.warmup_iters)
    poly.end = ITERS
    return mm


def train_mmseg(cfg, initial, batches, folder, threads=None):
    """mmseg's Runner.train() on our recorded batches from our initial weights; returns the model and its record."""
    from mmengine.hooks import Hook as MMHook
    from mmengine.runner import Runner
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules

    class Record(MMHook):
        """The losses of each iteration, and each parameter's (lr, weight decay) as its step uses them (the
        ParamSchedulerHook sets the next lr after the step)."""

        def __init__(self):
            self.losses, self.hyper, self.states = [], [], []

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.hyper.append({n: (g["lr"], g["weight_decay"])
                               for g in runner.optim_wrapper.optimizer.param_groups for n in g["param_names"]})

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.losses.append({k: v.item() for k, v in outputs.items() if "loss" in k})
            if (batch_idx + 1) % SNAPSHOT == 0:
                self.states.append(copy.deepcopy(runner.model.state_dict()))

    register_all_modules()
    mm = mmseg_config(cfg)
    model = MODELS.build(mm.model)
    replay = [{"inputs": list(b["image"]),
               "data_samples": [SegDataSample(gt_sem_seg=PixelData(data=label[None].long())) for label in b["label"]]}
              for b in batches]
    record = Record()
    runner = Runner(model=model, work_dir=str(folder / "mmseg"), train_dataloader=torch.utils.data.DataLoader(
                        replay, batch_size=None, collate_fn=lambda b: b),
                    train_cfg=dict(type="IterBasedTrainLoop", max_iters=ITERS, val_interval=ITERS + 1),
                    optim_wrapper=mm.optim_wrapper, param_scheduler=mm.param_scheduler,
                    default_hooks=dict(checkpoint=None, sampler_seed=None,
                                       logger=dict(type="LoggerHook", interval=ITERS)),
                    custom_hooks=[record], default_scope="mmseg", log_level="WARNING")
    model.init_weights()  # the runner's own call is then a no-op: the weights below stay
    missing, unexpected = model.load_state_dict(in_mmseg_names(initial, folder), strict=False)
    assert not unexpected and all(k.endswith("relative_position_index") for k in missing), (missing, unexpected)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # mmseg's optimizer constructor prints every parameter
            runner.train()
    finally:
        torch.set_num_threads(previous)
    return model, record


# our loss names -> mmseg's log names
LOSS_NAMES = {"loss": "loss", "loss_ce": "decode.loss_ce", "aux_loss_ce": "aux.loss_ce"}


def in_mmseg_terms(record, model, folder):
    """Our record's losses and (lr, weight decay) per update under mmseg's names: the parameter names by the
    converter of `in_mmseg_names`, fed each parameter's index in its place."""
    names = [n for n, _ in model.named_parameters()]
    tagged = in_mmseg_names({n: torch.full_like(p, i) for i, (n, p) in enumerate(model.named_parameters())}, folder)
    renamed = {names[int(v.flatten()[0])]: k for k, v in tagged.items()}
    return ([{LOSS_NAMES[k]: v for k, v in step.items()} for step in record.losses],
            [{renamed[n]: v for n, v in step.items()} for step in record.hyper])


def run_all(folder):
    """Our run on 16 demo scenes, mmseg's on the same batches, and mmseg's again with another thread count: each
    as (the weights every SNAPSHOT iterations in mmseg's names, the last the final ones; losses per iteration;
    (lr, weight decay) of each parameter per iteration)."""
    from maetransfer.config import load_config
    from maetransfer.data.ade import write_demo_ade20k

    root = write_demo_ade20k(folder / "ADEChallengeData2016", 16, 2, 96)
    cfg = load_config(ROOT / "configs/seg/base.yaml", [*RECIPE, f"data.root={root}"])
    initial, ours, record, batches = train_ours(cfg, folder)
    runs = {"ours": ([in_mmseg_names(state, folder) for state in record.states], *in_mmseg_terms(record, ours, folder))}
    threads = torch.get_num_threads()
    for name, count in (("mmseg", threads), ("mmseg, other threads", 1 if threads > 1 else 2)):
        _, their = train_mmseg(cfg, initial, batches, folder, threads=count)
        runs[name] = (their.states, their.losses, their.hyper)
    return runs


def loss_differences(losses, reference):
    """Per iteration the largest relative difference of the losses."""
    return [max(abs(a[k] - b[k]) / abs(b[k]) for k in b) for a, b in zip(losses, reference)]


def weight_differences(state, reference):
    """Per floating-point tensor the largest difference relative to the tensor's largest magnitude."""
    differences = {}
    for name, value in state.items():
        if value.is_floating_point():
            theirs = reference[name].double()
            differences[name] = float((value.double() - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))
    return differences


@pytest.fixture(scope="module")
def runs(mmseg, tmp_path_factory):
    return run_all(tmp_path_factory.mktemp("trajectory"))


def test_every_parameter_gets_mmsegs_learning_rate_and_weight_decay(runs):
    (_, _, hyper), (_, _, theirs) = runs["ours"], runs["mmseg"]
    assert len(hyper) == len(theirs) == ITERS
    for step, (mine, their) in enumerate(zip(hyper, theirs)):
        assert set(mine) == set(their)
        for name, (lr, wd) in their.items():
            assert mine[name][0] == pytest.approx(lr, rel=1e-12, abs=1e-30), (step, name)
            assert mine[name][1] == wd, (step, name)
    # the recipe is there: warm-up from 1e-6, the peak at its last iteration, poly to 0 at the run's last, layer
    # decay 0.65 over depth 4, mmseg's weight-decay rule (only 1-D tensors exempt)
    embed, head = "backbone.patch_embed.projection.weight", "decode_head.conv_seg.weight"
    assert [theirs[i][head][0] for i in (0, 9, 10, ITERS - 1)] == pytest.approx([1e-10, 1e-4, 1e-4, 0.0])
    assert theirs[9][embed][0] == pytest.approx(1e-4 * 0.65 ** 5)
    assert theirs[9]["backbone.layers.0.attn.qkv.weight"][0] == pytest.approx(1e-4 * 0.65 ** 4)
    assert {theirs[0][n][1] for n in ("backbone.pos_embed", "backbone.cls_token", embed, head,
                                      "backbone.layers.0.attn.relative_position_bias_table")} == {0.05}
    assert {theirs[0][n][1] for n in ("backbone.layers.0.gamma_1", "backbone.layers.0.attn.qkv.bias",
                                      "decode_head.conv_seg.bias")} == {0.0}


def test_every_loss_at_every_iteration_within_1e4_of_mmsegs(runs):
    (_, losses, _), (_, theirs, _) = runs["ours"], runs["mmseg"]
    assert len(losses) == len(theirs) == ITERS and all(set(a) == set(b) and len(b) == 3
                                                       for a, b in zip(losses, theirs))
    differences = loss_differences(losses, theirs)
    assert max(differences) <= 1e-4, differences


def test_final_weights_as_close_to_mmsegs_as_mmseg_to_itself(runs):
    ours, theirs, again = (runs[name][0][-1] for name in ("ours", "mmseg", "mmseg, other threads"))
    # everything but mmseg's constant relative_position_index buffers, which files leave out
    assert set(ours) == {n for n in theirs if not n.endswith("relative_position_index")}
    for name, value in ours.items():  # BatchNorm's counters
        if not value.is_floating_point():
            assert torch.equal(value, theirs[name]), name
    mine, spread = weight_differences(ours, theirs), weight_differences(again, theirs)
    worse = {n: (d, spread[n]) for n, d in mine.items() if d > max(1e-4, 3 * spread[n])}
    assert not worse, worse


def main():
    """The figures of docs/segmentation.md: per iteration the largest relative loss difference between ours and
    mmseg, next to the one between two mmseg runs that differ only in their thread count; the same for the weights
    every SNAPSHOT iterations."""
    import tempfile

    from conftest import import_mmseg

    import_mmseg()
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_all(Path(tmp))
    (ours, losses, hyper), (theirs, their_losses, their_hyper), (again, again_losses, _) = runs.values()
    ours_vs, self_vs = loss_differences(losses, their_losses), loss_differences(again_losses, their_losses)
    lr = max(abs(a[n][0] - b[n][0]) / max(b[n][0], 1e-30) for a, b in zip(hyper, their_hyper) for n in b)
    weights, self_weights = weight_differences(ours[-1], theirs[-1]), weight_differences(again[-1], theirs[-1])
    print("iteration  ours-vs-mmseg  mmseg-threads-vs-mmseg (largest relative loss difference)")
    for step, (a, b) in enumerate(zip(ours_vs, self_vs)):
        print(f"{step + 1:9d}  {a:13.2e}  {b:22.2e}")
    print(f"largest relative difference over {ITERS} iterations: losses {max(ours_vs):.2e} (mmseg vs itself "
          f"{max(self_vs):.2e}), lr {lr:.2e}, final weights {max(weights.values()):.2e} (mmseg vs itself "
          f"{max(self_weights.values()):.2e}); tensors over 1e-4: {sum(d > 1e-4 for d in weights.values())} of "
          f"{len(weights)} (mmseg vs itself {sum(d > 1e-4 for d in self_weights.values())})")
    print("iteration  ours-vs-mmseg  mmseg-threads-vs-mmseg (largest weight difference relative to its tensor, "
          "tensors over 1e-4)")
    for step, (mine, their, other) in enumerate(zip(ours, theirs, again)):
        a, b = weight_differences(mine, their), weight_differences(other, their)
        print(f"{(step + 1) * SNAPSHOT:9d}  {max(a.values()):.2e} {sum(d > 1e-4 for d in a.values()):4d}  "
              f"{max(b.values()):.2e} {sum(d > 1e-4 for d in b.values()):4d}")


if __name__ == "__main__":
    main()
