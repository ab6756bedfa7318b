"""Shared engine: config composition, lr schedules, exact resume, atomic checkpoints, bad input, DDP."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_trainer import train_tiny_mlp
from omegaconf import OmegaConf

from maetransfer.config import ConfigError, load_config
from maetransfer.data.images import ImageReadError, UnlabeledImages
from maetransfer.optim import lr_at, no_decay_on, param_groups
from pretrain.models_mae import MaskedAutoencoderViT

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.arch=vit_micro", "model.patch_size=8", "model.img_size=32", "model.decoder_embed_dim=32",
        "model.decoder_depth=1", "model.decoder_num_heads=4", "train.batch_size=4", "train.num_workers=0",
        "train.log_period=1", "train.warmup_epochs=1", "train.amp=none", "data.num_preview=2"]


def test_config_base_overrides_and_unknown_keys(tmp_path):
    cfg = load_config("configs/pretrain/mae_vit_large.yaml", ["train.blr=1e-4"])
    assert cfg.model.arch == "vit_large" and cfg.train.blr == 1e-4 and cfg.train.betas == [0.9, 0.95]
    assert cfg.model.decoder_depth == 8 and cfg.train.weight_decay == 0.05
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        load_config("configs/pretrain/demo.yaml", ["train.lrr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {ROOT / 'configs/pretrain/base.yaml'}\nmodel:\n  archh: vit_base\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'model.archh'"):
        load_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)


def test_lr_schedules_against_hand_values():
    t = OmegaConf.create({"warmup_iters": 10, "warmup_epochs": 0, "warmup_start_factor": 0.0, "min_lr": 0.0,
                          "schedule": "cosine", "poly_power": 1.0, "steps": [60, 90], "gamma": 0.1})
    assert lr_at(t, 0, 110, 10, 1.0) == 0.0
    assert lr_at(t, 5, 110, 10, 1.0) == 0.5
    assert lr_at(t, 60, 110, 10, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    t.schedule = "poly"
    assert lr_at(t, 35, 110, 10, 2.0) == pytest.approx(2.0 * (1 - 25 / 100))
    t.schedule, t.warmup_start_factor = "step", 0.001
    assert lr_at(t, 0, 110, 10, 1.0) == pytest.approx(0.001)
    assert [lr_at(t, i, 110, 10, 1.0) for i in (59, 60, 95)] == pytest.approx([1.0, 0.1, 0.01])


def test_mmengine_schedule_ends_one_iteration_earlier():
    # mmseg's LinearLR(start_factor, begin=0, end=10) then PolyLR(begin=10, end=110): each scheduler spans
    # end - begin - 1 steps, so the peak is reached at iteration 9 (and kept at 10) and 0 at the last, 109
    t = OmegaConf.create({"warmup_iters": 10, "warmup_epochs": 0, "warmup_start_factor": 1e-6, "min_lr": 0.0,
                          "schedule": "poly", "poly_power": 1.0, "mmengine_schedule": True})
    assert lr_at(t, 3, 110, 10, 2.0) == pytest.approx(2.0 * (1e-6 + (1 - 1e-6) * 3 / 9))
    assert [lr_at(t, i, 110, 10, 2.0) for i in (9, 10, 35, 109)] == pytest.approx([2.0, 2.0, 2.0 * (1 - 25 / 99), 0])


def test_pretrain_weight_decay_groups():
    model = MaskedAutoencoderViT(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                 decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
    groups = param_groups(model, 0.05, no_decay=no_decay_on(model.no_weight_decay()))
    decayed = {n for g in groups if g["weight_decay"] for n in g["param_names"]}
    # as the official main_pretrain.py (timm add_weight_decay, no skip list): the tokens are decayed
    assert "cls_token" in decayed and "mask_token" in decayed and "blocks.0.norm1.weight" not in decayed
    assert "blocks.0.attn.qkv.bias" not in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert "pos_embed" not in {n for g in groups for n in g["param_names"]}  # fixed sin-cos, not trained


def _pretrain(args):
    from tools.pretrain_mae import main
    main(args)


def test_resume_is_exact_and_checkpoints_are_atomic(image_dir, tmp_path):
    common = [f"data.root={image_dir}", *TINY]
    _pretrain([*common, "train.epochs=2", "--output-dir", str(tmp_path / "full")])
    _pretrain([*common, "train.epochs=1", "--output-dir", str(tmp_path / "split")])
    _pretrain([*common, "train.epochs=2", "--output-dir", str(tmp_path / "split"), "--resume", "auto"])
    full = torch.load(tmp_path / "full/checkpoint.pth", weights_only=True)
    split = torch.load(tmp_path / "split/checkpoint.pth", weights_only=True)
    assert full["iter"] == split["iter"] == 8
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    out = tmp_path / "full"
    assert not list(out.glob(".*tmp*")), "a temporary checkpoint file was left behind"
    encoder = torch.load(out / "mae_pretrain_encoder.pth", weights_only=True)["model"]
    assert "decoder_embed.weight" not in encoder and "blocks.0.attn.qkv.weight" in encoder
    assert (out / "config.yaml").is_file() and (out / "reconstructions" / "epoch0002.png").is_file()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == list(range(1, 9)) and all(math.isfinite(r["loss"]) for r in records)
    assert list((out / "tb").glob("events.out.tfevents.*"))


def test_reconstructions_are_one_file_per_checkpoint_when_training_by_iterations(image_dir, tmp_path):
    _pretrain([f"data.root={image_dir}", *TINY, "train.max_iters=6", "train.checkpoint_period=2",
               "--output-dir", str(tmp_path)])
    names = sorted(p.name for p in (tmp_path / "reconstructions").glob("*.png"))
    assert names == ["iter0000002.png", "iter0000004.png", "iter0000006.png"]  # 4 iterations per epoch


def test_corrupt_image_is_named_or_skipped(image_dir, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for src in sorted(image_dir.glob("*.png"))[:3]:
        (folder / src.name).write_bytes(src.read_bytes())
    bad = folder / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    ds = UnlabeledImages(folder)
    index = ds.files.index(bad)
    with pytest.raises(ImageReadError, match=r"1\.png: corrupt or unreadable image"):
        ds[index]
    with pytest.warns(UserWarning, match=r"1\.png.*skipped \(1 skipped"):
        assert UnlabeledImages(folder, skip_corrupt=True)[index].size == (40, 40)


DDP_SCRIPT = r"""
import sys, torch
from omegaconf import OmegaConf
from maetransfer.config import load_config
from maetransfer.engine import Trainer
from maetransfer.optim import param_groups
cfg = load_config("configs/train_defaults.yaml", ["train.batch_size=" + sys.argv[2], "train.epochs=2", "train.lr=0.1",
      "train.optimizer=sgd", "train.momentum=0.0", "train.weight_decay=0.0", "train.schedule=constant",
      "train.num_workers=0", "train.device=cpu", "train.output_dir=" + sys.argv[1]])
torch.manual_seed(0)
x = torch.randn(32, 5)
data = list(zip(x, x @ torch.arange(5.0)))
model = torch.nn.Linear(5, 1)
def loss_fn(model, batch, device):
    xb, yb = batch
    return ((model(xb).squeeze(1) - yb) ** 2).mean(), {}
Trainer(cfg, model, param_groups(model, 0.0), data, loss_fn).fit()
"""


def test_ddp_two_gloo_processes_match_one_process_with_the_same_total_batch(tmp_path):
    """2 processes x batch 4 must step exactly like 1 process x batch 8 (same samples, averaged gradients)."""
    script = tmp_path / "ddp_linear.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29731",
                    str(script), str(tmp_path / "ddp"), "4"], cwd=ROOT, env=env, check=True, timeout=240)
    subprocess.run([sys.executable, str(script), str(tmp_path / "single"), "8"], cwd=ROOT, env=env, check=True,
                   timeout=120)
    ddp = torch.load(tmp_path / "ddp/checkpoint.pth", weights_only=True)
    single = torch.load(tmp_path / "single/checkpoint.pth", weights_only=True)
    assert ddp["iter"] == single["iter"] == 8
    for key in single["model"]:
        torch.testing.assert_close(ddp["model"][key], single["model"][key], rtol=1e-5, atol=1e-6)


ALONE_SCRIPT = DDP_SCRIPT.replace("Trainer(cfg, model, param_groups(model, 0.0), data, loss_fn).fit()", """
from maetransfer.engine import dist, setup_process
setup_process(cfg.train)  # the 2-process group
if dist.is_main_process():
    with dist.alone():  # work one process does for all (the demo encoder's pretraining) while the other waits
        trainer = Trainer(cfg, model, param_groups(model, 0.0), data, loss_fn)
        trainer.fit()
        assert (trainer.world_size, dist.get_rank()) == (1, 0)
dist.barrier()
assert dist.get_world_size() == 2
""")


def test_one_process_trains_alone_inside_a_process_group_while_the_others_wait(tmp_path):
    """Rank 0 of a 2-process torchrun group trains as a single process (no DDP, no collectives) and ends with the
    weights of a plain one-process run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = tmp_path / "alone.py"
    script.write_text(ALONE_SCRIPT)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29733",
                    str(script), str(tmp_path / "alone"), "8"], cwd=ROOT, env=env, check=True, timeout=240)
    (tmp_path / "single.py").write_text(DDP_SCRIPT)
    subprocess.run([sys.executable, str(tmp_path / "single.py"), str(tmp_path / "single"), "8"], cwd=ROOT, env=env,
                   check=True, timeout=120)
    alone = torch.load(tmp_path / "alone/checkpoint.pth", weights_only=True)
    single = torch.load(tmp_path / "single/checkpoint.pth", weights_only=True)
    assert alone["iter"] == single["iter"] == 8 and len(alone["rng"]) == 1
    for key in single["model"]:
        assert torch.equal(alone["model"][key], single["model"][key]), key


LOGGED_MEAN_SCRIPT = DDP_SCRIPT.replace("""def loss_fn(model, batch, device):
    xb, yb = batch
    return ((model(xb).squeeze(1) - yb) ** 2).mean(), {}""", """import json, os
rank = int(os.environ["RANK"])
def loss_fn(model, batch, device):
    xb, yb = batch
    loss = ((model(xb).squeeze(1) - yb) ** 2).mean()
    logs = {"rank_part": torch.tensor(float(rank))} if rank == 1 else {}  # a value only one process has
    with open(sys.argv[1] + f"/losses{rank}.jsonl", "a") as f:
        f.write(json.dumps(loss.item()) + "\\n")
    return loss, logs""").replace('"train.epochs=2"', '"train.epochs=1", "train.log_period=" + sys.argv[3]')


@pytest.mark.parametrize("log_period, windows", [(1, [1, 1, 1, 1]), (3, [3, 1])])
def test_logged_losses_are_the_mean_over_processes_and_the_window(tmp_path, log_period, windows):
    """Each logged loss is the mean over the updates of its window of the two processes' mean loss of each update
    (as detectron2 and MAE log them), and a value that only one process reports is that process's."""
    script = tmp_path / "ddp_mean.py"
    script.write_text(LOGGED_MEAN_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29735",
                    str(script), str(out), "4", str(log_period)], cwd=ROOT, env=env, check=True, timeout=240)
    per_rank = [[json.loads(line) for line in (out / f"losses{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 4 and per_rank[0] != per_rank[1]
    per_update = [(mine + theirs) / 2 for mine, theirs in zip(*per_rank)]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [r["window"] for r in records] == windows
    start = 0
    for record, size in zip(records, windows):
        window = per_update[start:start + size]
        assert record["loss"] == pytest.approx(sum(window) / size, rel=1e-6)
        assert record["loss_median"] == pytest.approx(float(np.median(window)), rel=1e-6)
        assert record["rank_part"] == 1.0
        start += size


def test_ddp_pretraining_runs_with_two_processes(image_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          "--master_port=29732", "tools/pretrain_mae.py", f"data.root={image_dir}", *TINY,
                          "train.epochs=1", "--output-dir", str(tmp_path / "ddp")],
                         cwd=ROOT, env=env, check=True, timeout=240, capture_output=True, text=True)
    ckpt = torch.load(tmp_path / "ddp/checkpoint.pth", weights_only=True)
    assert ckpt["iter"] == 2  # 16 images / (2 processes x batch 4)
    assert run.stdout.count("encoder written to") == 1  # once per job, not once per process


class _RandomlyAugmented(torch.utils.data.Dataset):
    """Each sample draws from torch, numpy and random, as real augmentation pipelines do."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        import random
        noise = torch.randn(4) + float(np.random.uniform()) + random.random()
        return torch.full((4,), float(index)) + noise


@pytest.mark.parametrize("num_workers", [0, 2])
def test_mid_epoch_resume_is_exact_with_data_loader_workers(tmp_path, num_workers):
    def run(output_dir, stop_at=None, resume=""):
        # stopped at call 5: a kill between the iteration-3 checkpoint and the next one
        trainer = train_tiny_mlp(output_dir, ["train.max_iters=6", "train.checkpoint_period=3",
                                              f"train.num_workers={num_workers}", f"train.resume={resume}"],
                                 _RandomlyAugmented(), stop_at)
        return trainer.model_without_ddp.state_dict(), trainer.iter

    full, iters = run(tmp_path / "full")
    _, stopped = run(tmp_path / "split", stop_at=5)
    resumed, resumed_iters = run(tmp_path / "split", resume="auto")
    assert (iters, stopped, resumed_iters) == (6, 4, 6)  # 8 batches per epoch: iteration 3 is mid-epoch
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key


def test_ema_of_the_weights_is_evaluated_saved_and_resumed(tmp_path):
    """train.ema_decay=d: after one step the EMA is d * w0 + (1 - d) * w1 (hand formula), it is what evaluate_fn
    sees, it is written as model_ema.pth, and a resumed run continues it exactly."""
    from maetransfer.engine import Trainer

    decay = 0.9
    cfg = load_config(ROOT / "configs/train_defaults.yaml",
                      ["train.batch_size=4", "train.lr=0.1", "train.schedule=constant", "train.num_workers=0",
                       f"train.ema_decay={decay}",
                       "train.max_iters=1", "train.checkpoint_period=1"])

    def run(output_dir, max_iters, resume=""):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        seen = []
        cfg.train.max_iters, cfg.train.resume = max_iters, resume
        trainer = Trainer(cfg, model, [{"params": list(model.parameters())}], _RandomlyAugmented(),
                          lambda m, batch, device: (((m(batch) - 1) ** 2).mean(), {}), str(output_dir),
                          evaluate_fn=lambda m: seen.append({k: v.clone() for k, v in m.state_dict().items()}) or {})
        trainer.fit()
        return initial, model.state_dict(), seen[-1]

    initial, trained, evaluated = run(tmp_path / "one", 1)
    for key in initial:
        expected = decay * initial[key] + (1 - decay) * trained[key]
        torch.testing.assert_close(evaluated[key], expected)
        torch.testing.assert_close(torch.load(tmp_path / "one/model_ema.pth", weights_only=True)["model"][key],
                                   expected)

    _, _, full = run(tmp_path / "full", 3)
    run(tmp_path / "split", 2)
    _, _, resumed = run(tmp_path / "split", 3, resume="auto")
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_progress_announces_planned_stages_and_counts_epochs(tmp_path, capsys):
    """Stages come numbered in the planned order, the bar counts iterations of the whole stage and names the epoch
    as 'epoch k/n', and the plan ends with its block."""
    from maetransfer.engine import Trainer, progress

    cfg = load_config(ROOT / "configs/train_defaults.yaml",
                      ["train.batch_size=4", "train.epochs=2", "train.lr=0.1", "train.num_workers=0"])
    model = torch.nn.Linear(4, 1)
    with progress.planned_stages(["pretrain", "train", "evaluate"]):
        Trainer(cfg, model, [{"params": list(model.parameters())}], _RandomlyAugmented(),
                lambda m, batch, device: ((m(batch) ** 2).mean(), {}), str(tmp_path),
                evaluate_fn=lambda m: {"score": 1.0}).fit()
        progress.begin_stage("pretrain", "not in order, still numbered by the plan")
    progress.begin_stage("train", "after the plan")
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert f"[2/3] training: 8 iterations of 4 images (2 epochs) into {tmp_path}" in lines
    assert "[3/3] evaluation: the final model on the validation set" in lines
    assert "[1/3] MAE pretraining: not in order, still numbered by the plan" in lines
    assert "training: after the plan" in lines
    assert "epoch 1/2" in err and "epoch 2/2" in err and "8/8" in err
    assert progress.format_duration(293) == "4 min 53 s" and progress.format_duration(3720) == "1 h 02 min"


def test_setup_process_sets_threads_and_seeds_the_initial_weights():
    """train.num_threads reaches torch (0 leaves torch's choice) and train.seed fixes the weights a run builds."""
    from maetransfer.cls.model import build_classifier
    from maetransfer.engine import setup_process

    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    model_cfg = load_config(ROOT / "configs/cls/demo.yaml").model
    try:
        cfg = load_config(ROOT / "configs/train_defaults.yaml", [f"train.num_threads={other}", "train.seed=3"])
        setup_process(cfg.train)
        assert torch.get_num_threads() == other
        first = build_classifier(model_cfg, 6, 32).state_dict()
        torch.rand(5)  # whatever ran before, the next run starts from the seed
        cfg.train.num_threads = 0
        setup_process(cfg.train)
        assert torch.get_num_threads() == other  # unchanged
        second = build_classifier(model_cfg, 6, 32).state_dict()
        cfg.train.seed = 4
        setup_process(cfg.train)
        third = build_classifier(model_cfg, 6, 32).state_dict()
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["head.weight"], third["head.weight"])
