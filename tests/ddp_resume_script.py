"""Launched by tests/test_faults_engine.py under torchrun (2 gloo processes): for an epoch-based and an
iteration-based run, an uninterrupted run, a run stopped mid-way (as by a kill) and its resumption from the last
checkpoint, each in its own folder under argv[1]. The loss draws from each process's own RNG (dropout and torch.rand,
as MAE draws its masks), so only restoring every process's own RNG state makes the resumed run bit-exact."""
import sys
from pathlib import Path

import torch

from maetransfer.config import load_config
from maetransfer.engine import Trainer, dist

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["train.batch_size=2", "train.lr=0.01", "train.warmup_epochs=0", "train.num_workers=0", "train.device=cpu",
          "train.log_period=1"]
# 32 samples / (2 processes x batch 2) = 8 iterations per epoch
MODES = {"epochs": (["train.epochs=2", "train.checkpoint_period=1"], 12),  # stopped in epoch 2, resumed from its start
         "iters": (["train.max_iters=12", "train.checkpoint_period=3"], 6)}  # stopped at 5, resumed from 3: mid-epoch


class Stopped(Exception):
    pass


def run(output_dir: Path, overrides, stop_at_call=None, resume=""):
    cfg = load_config(ROOT / "configs/train_defaults.yaml",
                      [*COMMON, *overrides, f"train.resume={resume}", f"train.output_dir={output_dir}"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    data = list(torch.randn(32, 4, generator=torch.Generator().manual_seed(1)))
    calls = []

    def loss_fn(model, batch, device):
        calls.append(1)
        if len(calls) == stop_at_call:
            raise Stopped  # every process stops at the same step, as a kill of the job would
        target = torch.rand(len(batch))
        return ((model(batch).squeeze(1) - target) ** 2).mean(), {}

    try:
        Trainer(cfg, model, [{"params": list(model.parameters())}], data, loss_fn).fit()
    except Stopped:
        pass


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for mode, (overrides, stop_at_call) in MODES.items():
        run(out / mode / "full", overrides)
        run(out / mode / "split", overrides, stop_at_call)
        run(out / mode / "split", overrides, resume="auto")
    dist.barrier()
