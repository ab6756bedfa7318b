"""A tiny engine run shared by the engine tests: a small MLP whose training can be stopped as a kill would."""
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


class Stopped(Exception):
    """What `train_tiny_mlp`'s loss raises to stop a run as a kill would."""


def train_tiny_mlp(output_dir, overrides, data, stop_at_call=None, fault=None, on_loss_call=None, evaluate_fn=None):
    """Train a 4-8-1 MLP with dropout (seed 0), loss mean(output^2), with the engine on `data` (4-vectors) into
    `output_dir`: train_defaults.yaml with lr 0.1, batch 2, log every update, no workers, then `overrides`. At loss
    call `stop_at_call` the loss raises `fault`, by default Stopped, which ends the run as a kill would;
    `on_loss_call(n)` runs at every loss call n; `evaluate_fn` is the trainer's. Returns the trainer (its
    model_without_ddp is the trained MLP)."""
    from maetransfer.config import load_config
    from maetransfer.engine import Trainer

    cfg = load_config(ROOT / "configs/train_defaults.yaml", ["train.lr=0.1", "train.batch_size=2", "train.log_period=1",
                                                             "train.num_workers=0", *overrides])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
    calls = []

    def loss_fn(model, batch, device):
        calls.append(1)
        if on_loss_call is not None:
            on_loss_call(len(calls))
        if len(calls) == stop_at_call:
            raise fault or Stopped()
        return (model(batch) ** 2).mean(), {}

    trainer = Trainer(cfg, model, [{"params": list(model.parameters())}], data, loss_fn, str(output_dir),
                      evaluate_fn=evaluate_fn)
    try:
        trainer.fit()
    except Stopped:
        pass
    return trainer
