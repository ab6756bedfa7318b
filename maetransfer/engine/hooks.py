"""What a training run does besides optimizing, as hooks on the loop (the pattern of detectron2's HookBase and
mmengine's hooks): the trainer's loop knows *when* (after each update, at an epoch's end, after a checkpoint), each hook
knows *what*. Every method receives the trainer, whose `iter` (updates done), `epoch`, `total_iters`, `by_iters`,
models and `output_dir` say where the run is. Hooks run on every process, in the order given; what writes files
checks `dist.is_main_process()` itself.

The built-in hooks, in the order the trainer runs them: `WeightAverage` (EMA), `MetricLogger` (log.jsonl +
TensorBoard, losses averaged over processes), `ProgressBar` (tqdm), `PeriodicCheckpointer`, `PeriodicEvaluator`.
"""
import json
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from ..files import save_torch, write_text
from . import dist
from .checkpointing import EMA_NAME, TrainingError

if TYPE_CHECKING:
    from .trainer import Trainer


class Hook:
    """Does nothing at every point; subclasses override what they need."""

    def before_train(self, trainer: "Trainer") -> None:
        """Once, before the first update (after a resume: the checkpoint is loaded, `trainer.iter` is its)."""

    def before_epoch(self, trainer: "Trainer") -> None:
        """Before the first update of an epoch (also a resumed, partly done one)."""

    def after_update(self, trainer: "Trainer", record: Dict) -> None:
        """After each optimizer update; `record`: this update's learning rate and losses (averaged over its
        accumulated micro-batches; scalar tensors stay on the device until read)."""

    def after_epoch(self, trainer: "Trainer") -> None:
        """After the last update of an epoch (`trainer.epoch` already counts it)."""

    def after_checkpoint(self, trainer: "Trainer") -> None:
        """After the training checkpoint of `trainer.iter` is written."""

    def after_evaluate(self, trainer: "Trainer", metrics: Dict) -> None:
        """After an evaluation (periodic or the final one)."""

    def after_train(self, trainer: "Trainer") -> None:
        """After the last update and the final checkpoint, before the final evaluation."""

    def close(self) -> None:
        """When the run ends, however it ends (release files and threads)."""

    def state_dict(self) -> Dict:
        """What the hook adds to a training checkpoint (top-level keys)."""
        return {}

    def load_state_dict(self, checkpoint: Dict, path: Path) -> None:
        """Resume the hook from a training checkpoint read from `path`."""


def period_hit(trainer: "Trainer", period: int, epoch_end: bool) -> bool:
    """Whether a period counted in the run's unit (iterations with train.max_iters, else epochs) ends now, short of
    the run's end (the end has its own checkpoint and evaluation)."""
    if period <= 0 or trainer.iter >= trainer.total_iters:
        return False
    if trainer.by_iters:
        return not epoch_end and trainer.iter % period == 0
    return epoch_end and trainer.epoch % period == 0


class WeightAverage(Hook):
    """Exponential moving average of the weights (timm's ModelEmaV3), updated after every optimizer update and
    evaluated instead of the raw weights; saved in the checkpoint as 'model_ema' and, at the end, alone as
    model_ema.pth for --eval-only. Off (train.ema_decay=0) in every published MAE recipe."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.averaged = ModelEmaV3(model, decay=decay)

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    def after_update(self, trainer, record):
        self.averaged.update(trainer.model_without_ddp)

    def after_train(self, trainer):
        if dist.is_main_process():
            save_torch({"model": self.module.state_dict()}, trainer.output_dir / EMA_NAME)

    def state_dict(self):
        return {"model_ema": self.module.state_dict()}

    def load_state_dict(self, checkpoint, path):
        if "model_ema" not in checkpoint:
            raise TrainingError(f"{path}: cannot resume: it has no EMA weights (its run had train.ema_decay=0)")
        self.module.load_state_dict(checkpoint["model_ema"])


def drop_records_after(log: Path, last_iter: int) -> None:
    """Rewrite `log` (atomically) without the records past `last_iter`, which a resumed run writes again."""
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill in mid-write
        if record.get("iter", 0) <= last_iter:
            kept.append(line + "\n")
    write_text(log, "".join(kept))


def mean_over_processes(record: Dict[str, float]) -> Dict[str, float]:
    """Each value averaged over the processes that have it (as detectron2 and MAE log losses): a diagnostic that one
    process could not compute this update (no foreground sample) is averaged over the others."""
    if dist.get_world_size() == 1:
        return record
    records = dist.all_gather_object(record)
    keys = list(dict.fromkeys(k for r in records for k in r))
    return {k: sum(r[k] for r in records if k in r) / sum(k in r for r in records) for k in keys}


class MetricLogger(Hook):
    """Scalars to `log.jsonl` (one JSON object per line) and TensorBoard, main process only: every `period` updates
    and at the last, the update's learning rate and losses averaged over the processes; every evaluation's numbers
    as eval/<name>. A resumed run first removes the records after its checkpoint's iteration (written before it was
    stopped, or by an earlier run that this one overwrites) from both logs."""

    def __init__(self, period: int):
        self.period = period
        self.jsonl = self.tb = None

    def before_train(self, trainer):
        if dist.is_main_process():
            from torch.utils.tensorboard import SummaryWriter
            drop_records_after(trainer.output_dir / "log.jsonl", trainer.iter)
            self.jsonl = open(trainer.output_dir / "log.jsonl", "a")
            self.tb = SummaryWriter(str(trainer.output_dir / "tb"), purge_step=trainer.iter + 1)

    def after_update(self, trainer, record):
        if trainer.iter % self.period and trainer.iter != trainer.total_iters:
            return
        values = mean_over_processes({k: float(v) for k, v in record.items()})
        self.log(trainer.iter, {"epoch": trainer.epoch, **values})

    def after_evaluate(self, trainer, metrics):
        self.log(trainer.iter, {"epoch": trainer.epoch, **{f"eval/{k}": v for k, v in metrics.items()
                                                           if isinstance(v, (int, float))}})

    def log(self, step: int, record: Dict) -> None:
        if self.jsonl is None:
            return
        self.jsonl.write(json.dumps({"iter": step, **record}) + "\n")
        self.jsonl.flush()
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self):
        if self.jsonl is not None:
            self.jsonl.close()
            self.tb.close()
            self.jsonl = self.tb = None


class ProgressBar(Hook):
    """One tqdm bar for the whole stage (main process), so that its time estimate is the stage's; the epoch is in its
    label, this process's loss and the learning rate after it. Closed also when a step fails, so that the error gets
    its own line."""

    def __init__(self):
        self.bar: Optional[tqdm] = None

    def before_train(self, trainer):
        self.bar = tqdm(total=trainer.total_iters, initial=trainer.iter, unit="it", dynamic_ncols=True,
                        disable=not dist.is_main_process())

    def before_epoch(self, trainer):
        self.bar.set_description(f"epoch {trainer.epoch + 1}/{trainer.num_epochs}")

    def after_update(self, trainer, record):
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
        self.bar.update()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class PeriodicHook(Hook):
    """Runs `act` every `period` iterations or epochs (whichever the period counts, see period_hit)."""

    def __init__(self, period: int):
        self.period = period

    def act(self, trainer):
        raise NotImplementedError

    def after_update(self, trainer, record):
        if period_hit(trainer, self.period, epoch_end=False):
            self.act(trainer)

    def after_epoch(self, trainer):
        if period_hit(trainer, self.period, epoch_end=True):
            self.act(trainer)


class PeriodicCheckpointer(PeriodicHook):
    """A training checkpoint every train.checkpoint_period."""

    def act(self, trainer):
        trainer.save_checkpoint()


class PeriodicEvaluator(PeriodicHook):
    """An evaluation every train.eval_period."""

    def act(self, trainer):
        trainer.evaluate()


def default_hooks(trainer: "Trainer", averaged: Optional[WeightAverage]) -> List[Hook]:
    t = trainer.train_cfg
    hooks: List[Hook] = [averaged] if averaged is not None else []
    hooks += [MetricLogger(int(t.log_period)), ProgressBar(), PeriodicCheckpointer(int(t.checkpoint_period))]
    if trainer.evaluate_fn is not None:
        hooks.append(PeriodicEvaluator(int(t.eval_period)))
    return hooks
