"""The one door through which pretraining and every transfer task run, for training and for --eval-only alike: the
process is set up once (threads, seed, device, process group), demo data is written by one process, BatchNorm is
synchronised across processes where the task asks for it and the device allows it, and the results come back the
same way (`Task.results`, what the task wrote to metrics.json; pretraining: its encoder file)."""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig
from torch.utils.data import Dataset

from ..config import save_config
from ..export.runtime import check_config, is_exported, open_exported
from . import dist, progress
from .trainer import Trainer, setup_process


class Task:
    """What a task brings to the runner. `build` sets `train_set` (None with eval_only) and returns the model;
    `evaluate(model)` runs on every process, writes the task's results (main process) and returns the scalars to log;
    it keeps what the run returns in `results`."""

    name = ""  # the task's short name ('det', 'seg', 'cls'; 'pretrain')
    stage = "train"  # the progress stage of its training ('pretrain' for MAE pretraining)
    # The config setting that asks for BatchNorm synchronised across processes, when the built model has BatchNorm
    # that should be (e.g. "model.norm=SyncBN"); None: per-process BatchNorm, or none at all.
    sync_batchnorm: Optional[str] = None

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None  # set by `build` for tasks that evaluate
        self.results: Any = {}

    def prepare_data(self) -> None:
        """Main process only, before the others read data: write the demo data set when the config asks for it."""

    def build(self, eval_only: bool) -> nn.Module:
        raise NotImplementedError

    def load_trained(self, model: nn.Module, path: str, unsafe: bool) -> None:
        """--eval-only: the whole trained model from `path`."""
        raise NotImplementedError

    def load_pretrained(self, model: nn.Module, path: str, unsafe: bool) -> None:
        """train.init_checkpoint: the weights that training starts from."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> List[Dict]:
        raise NotImplementedError

    def loss_fn(self) -> Callable:
        raise NotImplementedError

    evaluate: Optional[Callable[[nn.Module], Dict]] = None

    def trainer_options(self) -> Dict:
        """Further Trainer arguments: collate_fn, checkpoint_meta, extra_hooks, data_name, find_unused_parameters."""
        return {}


def run_task(task: Task, eval_only: bool = False, checkpoint: Optional[str] = None,
             init_checkpoint: Optional[str] = None) -> Any:
    """Train `task` (from `init_checkpoint`, by default train.init_checkpoint) and evaluate it, or (eval_only)
    evaluate the trained model in `checkpoint`; returns `task.results`.
    init_checkpoint: the file that train.init_checkpoint names, as the tool resolved it (released names, hub ids and
    the demo encoder become files; the config keeps the name)."""
    cfg = task.cfg
    device = setup_process(cfg.train)  # before anything is written, so that only rank 0 writes
    if dist.is_main_process():
        task.prepare_data()
    dist.barrier()
    model = task.build(eval_only)
    if eval_only:
        evaluate_checkpoint(model, task.load_trained, checkpoint, cfg, device, task.evaluate, task.name,
                            getattr(task.val_set, "num_classes", None))
        return task.results
    init = init_checkpoint or cfg.train.init_checkpoint
    if init:
        task.load_pretrained(model, init, bool(cfg.train.unsafe_load))
    if task.sync_batchnorm:
        model = dist.sync_batchnorm(model, device, task.sync_batchnorm)
    trainer = Trainer(cfg, model, task.param_groups(model), task.train_set, task.loss_fn(), str(cfg.train.output_dir),
                      evaluate_fn=task.evaluate, stage=task.stage, device=device, **task.trainer_options())
    trainer.fit()
    return task.results


def evaluate_checkpoint(model: nn.Module, load: Callable[[nn.Module, str, bool], None], checkpoint: Optional[str],
                        cfg: DictConfig, device: torch.device, evaluate_fn: Callable[[nn.Module], Dict],
                        task: str = "", num_classes: Optional[int] = None) -> Dict:
    """--eval-only: `load(model, checkpoint, unsafe)`, write the resolved config, evaluate. A file written by
    tools/export.py replaces `model` instead (the exported model of `task`, run by ONNX Runtime or TorchScript), so
    that the metric is the deployed file's; it must take the config's input and predict the data set's
    `num_classes` classes."""
    if not checkpoint:
        raise ValueError("--eval-only needs --checkpoint")
    progress.begin_stage("evaluate", f"{checkpoint} on the validation set")
    if is_exported(checkpoint):
        model = open_exported(checkpoint, task, device)
        check_config(model.meta, cfg, checkpoint, num_classes)
    else:
        load(model, checkpoint, bool(cfg.train.unsafe_load))
    model.to(device).eval()
    if dist.is_main_process():
        save_config(cfg, Path(cfg.train.output_dir) / "config.yaml")
    with torch.no_grad():
        return evaluate_fn(model)


def model_device(model: nn.Module) -> torch.device:
    """The device a model computes on: its parameters' (an exported model has none and names its own)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else model.device
