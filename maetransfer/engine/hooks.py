"""What a training run does besides optimizing, as hooks on the loop (the pattern of detectron2's HookBase and
mmengine's hooks): the trainer's loop knows *when* (after each update, at an epoch's end, after a checkpoint), each hook
knows *what*. Every method receives the trainer, whose `iter` (updates done), `epoch`, `total_iters`, `by_iters`,
models and `output_dir` say where the run is. Hooks run on every process, in the order of the trainer's list; what
writes files checks `dist.is_main_process()` itself. A hook ends a run early with `trainer.request_stop(reason)`.

The hook list of a run (`build_hooks`, in this order): the built-in ones -- `WeightAverage` (EMA, when
train.ema_decay > 0), `MetricLogger` (log.jsonl + TensorBoard, averaged over each window of updates and over
processes), `ProgressBar` (tqdm), `PeriodicCheckpointer`, `PeriodicEvaluator` and `BestCheckpointer` (when the run
evaluates; the latter when train.save_best names a metric) -- then the task's own hooks, then the hooks the config
names (train.hooks, dotted import paths), then the hooks given through the Python API (`run_task(..., hooks=...)`).
"""
import importlib
import json
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from tqdm import tqdm

from ..config import ConfigError, to_dict
from ..files import save_torch, write_text
from . import dist
from .checkpointing import BEST_NAME, EMA_NAME, TrainingError

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
        """After an evaluation (periodic or the final one); `metrics` are the main process's, {} on the others."""

    def after_train(self, trainer: "Trainer") -> None:
        """After the last update and the final checkpoint, before the final evaluation."""

    def close(self) -> None:
        """When the run ends, however it ends (release files and threads)."""

    def state_dict(self) -> Dict:
        """What the hook keeps in a training checkpoint (under 'hooks', by the hook's class name; {}: nothing). Asked
        of every process at the same point (a hook may gather), the main process's is written."""
        return {}

    def load_state_dict(self, state: Optional[Dict], path: Path) -> None:
        """Resume the hook from what it kept in the training checkpoint `path` (None: the file holds nothing of
        it)."""


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
    evaluated instead of the raw weights; kept in the checkpoint and, at the end, written alone as model_ema.pth for
    --eval-only. Off (train.ema_decay=0) in every published MAE recipe."""

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

    def load_state_dict(self, state, path):
        if not state or "model_ema" not in state:
            raise TrainingError(f"{path}: cannot resume: it has no EMA weights (its run had train.ema_decay=0)")
        self.module.load_state_dict(state["model_ema"])


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


def mean_over_processes(records: List[Dict[str, float]]) -> Dict[str, float]:
    """Each value averaged over the processes that have it (as detectron2 and MAE log losses): a diagnostic that one
    process could not compute this update (no foreground sample) is averaged over the others."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    return {k: sum(r[k] for r in records if k in r) / sum(k in r for r in records) for k in keys}


def summarize_window(updates: List[Dict[str, float]]) -> Dict[str, float]:
    """One log record for a window of updates: the learning rate of the last update; every other value's mean over
    the updates that have it, and for losses (names with 'loss') also `<name>_median`, the median detectron2's
    printer shows, robust to one spike."""
    out: Dict[str, float] = {}
    for key in dict.fromkeys(k for u in updates for k in u):
        values = [u[key] for u in updates if key in u]
        if key == "lr":
            out[key] = values[-1]
            continue
        out[key] = sum(values) / len(values)
        if "loss" in key:
            out[f"{key}_median"] = statistics.median(values)
    out["window"] = len(updates)
    return out


class MetricLogger(Hook):
    """Scalars to `log.jsonl` (one JSON object per line) and TensorBoard, main process only. Each update's learning
    rate and losses are averaged over the processes (as detectron2 and MAE log them); every `period` updates and at
    the last, one record summarises the window of updates since the previous one (`summarize_window`: means, medians
    of the losses, `window` = its number of updates). The updates' values stay on the device until then: one read and
    one gather to the main process per record (and per checkpoint), not per update. Every evaluation's numbers
    are written as eval/<name>. The open window is kept in the checkpoint, so that a resumed run writes the records
    of an uninterrupted one; a resumed run first removes the records after its checkpoint's iteration (written
    before it was stopped, or by an earlier run that this one overwrites) from both logs."""

    def __init__(self, period: int):
        self.period = period
        self.pending: List[Dict] = []  # this process's records of the window not yet gathered (device tensors)
        self.window: List[Dict[str, float]] = []  # main process: the gathered updates of the window, process means
        self.jsonl = self.tb = None

    def before_train(self, trainer):
        if dist.is_main_process():
            from torch.utils.tensorboard import SummaryWriter
            drop_records_after(trainer.output_dir / "log.jsonl", trainer.iter)
            self.jsonl = open(trainer.output_dir / "log.jsonl", "a")
            self.tb = SummaryWriter(str(trainer.output_dir / "tb"), purge_step=trainer.iter + 1)

    def after_update(self, trainer, record):
        self.pending.append(record)
        if trainer.iter % self.period and trainer.iter != trainer.total_iters:
            return
        self._gather()
        if self.window:
            self.log(trainer.iter, {"epoch": trainer.epoch, **summarize_window(self.window)})
        self.window = []

    def _gather(self) -> None:
        """Every process: read its pending records and gather them to the main process, which keeps each update's
        mean over the processes (every process has the same updates)."""
        local = [{k: float(v) for k, v in record.items()} for record in self.pending]
        self.pending = []
        gathered = dist.gather_object(local)
        if gathered is not None:
            self.window += [mean_over_processes(list(update)) for update in zip(*gathered)]

    def after_evaluate(self, trainer, metrics):
        self.log(trainer.iter, {"epoch": trainer.epoch, **{f"eval/{k}": v for k, v in metrics.items()
                                                           if isinstance(v, (int, float))}})

    def log(self, step: int, record: Dict) -> None:
        if self.jsonl is None:
            return
        self.jsonl.write(json.dumps({"iter": step, **record}) + "\n")
        self.jsonl.flush()
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "window"):
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def state_dict(self):
        self._gather()  # a collective: the checkpointer asks every process
        return {"window": list(self.window)}

    def load_state_dict(self, state, path):
        self.window = list(state["window"]) if state else []

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


class BestCheckpointer(Hook):
    """best.pth: the evaluated weights (the EMA's when the run keeps one) of the evaluation with the best `metric` so
    far (detectron2's BestCheckpointer, mmengine's save_best), with the metric's name, value, iteration and epoch
    under 'best', the config and the checkpoint's meta; --eval-only and predict.py take it. Higher is better unless
    the metric's name has 'loss'. The best value so far is kept in the training checkpoint, so a resumed run goes on
    comparing against it."""

    def __init__(self, metric: str):
        self.metric = metric
        self.mode = "min" if "loss" in metric else "max"
        self.best: Optional[Dict[str, Any]] = None

    def after_evaluate(self, trainer, metrics):
        if not dist.is_main_process():
            return
        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)):  # a warning, not an error: the run's other work is not lost
            known = ", ".join(k for k, v in metrics.items() if isinstance(v, (int, float)))
            print(f"warning: train.save_best={self.metric}: the evaluation has no such number (it has {known}); "
                  f"no best.pth", file=sys.stderr)
            return
        if self.best is not None and not (value < self.best["value"] if self.mode == "min"
                                          else value > self.best["value"]):
            return
        self.best = {"metric": self.metric, "value": float(value), "iter": trainer.iter, "epoch": trainer.epoch}
        save_torch({"model": trainer.evaluation_model.state_dict(), "meta": trainer.checkpoint_meta,
                    "config": to_dict(trainer.cfg), "best": self.best},
                   trainer.output_dir / BEST_NAME)
        print(f"{trainer.output_dir / BEST_NAME}: {self.metric} {value:g} at iteration {trainer.iter}")

    def state_dict(self):
        return {"best": self.best} if self.best else {}

    def load_state_dict(self, state, path):
        self.best = state.get("best") if state else None


def build_hook(spec: Any) -> Hook:
    """A hook the config names (train.hooks): a dotted import path of a Hook class ('pkg.module.MyHook'), or a
    mapping with that path under 'type' and the constructor's keyword arguments."""
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec)
    kwargs = dict(spec) if isinstance(spec, dict) else {}
    path = kwargs.pop("type", None) if isinstance(spec, dict) else spec
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"train.hooks: {spec!r} is not a dotted import path of a hook class (or a mapping with "
                          f"'type': path)")
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"train.hooks: cannot import {path} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, Hook)):
        raise ConfigError(f"train.hooks: {path} is not a subclass of maetransfer.engine.Hook")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"train.hooks: {path}: {exc}") from None


def default_hooks(trainer: "Trainer") -> List[Hook]:
    """The built-in hooks, in their order (see the module's docstring)."""
    t = trainer.train_cfg
    hooks: List[Hook] = [WeightAverage(trainer.model_without_ddp, float(t.ema_decay))] if t.ema_decay > 0 else []
    hooks += [MetricLogger(int(t.log_period)), ProgressBar(), PeriodicCheckpointer(int(t.checkpoint_period))]
    if trainer.evaluate_fn is not None:
        hooks.append(PeriodicEvaluator(int(t.eval_period)))
        if t.save_best:
            hooks.append(BestCheckpointer(str(t.save_best)))
    return hooks


def configured_hooks(train_cfg: DictConfig) -> List[Hook]:
    """The hooks train.hooks names, built (before anything costly runs: a wrong path costs nothing)."""
    return [build_hook(spec) for spec in train_cfg.hooks]


def build_hooks(trainer: "Trainer", task_hooks: Sequence[Hook] = (), configured: Sequence[Hook] = (),
                hooks: Sequence[Hook] = ()) -> List[Hook]:
    """A run's hook list: the built-in hooks, the task's, the config's (`configured_hooks`), then `hooks` (the Python
    API's)."""
    return [*default_hooks(trainer), *task_hooks, *configured, *hooks]
