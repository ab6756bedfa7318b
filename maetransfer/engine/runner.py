"""The one door through which pretraining and every transfer task run, for training and for --eval-only alike: the
process is set up once (threads, seed, device, process group), demo data is written by one process, BatchNorm is
synchronised across processes where the task asks for it and the device allows it, the run's hooks are built in one
place (`hooks.build_hooks`), evaluation runs through the task's evaluator (`evaluation.inference_on_dataset`), and
the results come back the same way (`Task.results` on the main process: what the task wrote to metrics.json;
pretraining: its encoder file)."""
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn
from omegaconf import DictConfig
from torch.utils.data import Dataset

from ..config import ConfigError, save_config
from ..export.runtime import check_config, is_exported, open_exported
from . import dist, progress
from .evaluation import DatasetEvaluator, inference_on_dataset
from .hooks import Hook, build_hooks, configured_hooks
from .trainer import Trainer, setup_process


class Task:
    """What a task brings to the runner. `build` sets `train_set` (None with eval_only) and `val_set` and returns the
    model; `build_evaluator` returns the evaluator of `val_set` (`evaluation.DatasetEvaluator`), None for a task that
    does not evaluate. `results`: what the last evaluation returned, on the main process ({} on the others)."""

    name = ""  # the task's short name, its entry in `maetransfer.tasks.TASKS` ('det', 'seg', 'cls', 'pretrain')
    stage = "train"  # the progress stage of its training ('pretrain' for MAE pretraining)
    # Further exceptions that mean bad input of this task (reported by the tools as one line, exit 1)
    input_errors: Tuple[Type[BaseException], ...] = ()
    # The config setting that asks for BatchNorm synchronised across processes, when the built model has BatchNorm
    # that should be (e.g. "model.norm=SyncBN"); None: per-process BatchNorm, or none at all.
    sync_batchnorm: Optional[str] = None

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None  # set by `build` for tasks that evaluate
        self.results: Any = {}

    @classmethod
    def check_data(cls, cfg: DictConfig, eval_only: bool) -> None:
        """Cheap checks that the data the config names is there (files and folders, no reading), before anything
        costly runs (an init checkpoint's download, the demo encoder's pretraining); one line naming the path."""

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

    def build_evaluator(self) -> Optional[DatasetEvaluator]:
        """After `build`: the evaluator of the validation set, which also writes the task's result files."""
        return None

    def scalars(self, results: Dict) -> Dict[str, float]:
        """The numbers of `results` that the log and train.save_best see: top-level numbers, and one level down as
        'part/name' (detection's 'bbox/AP')."""
        flat = {}
        for key, value in results.items():
            for name, number in (value.items() if isinstance(value, dict) else [("", value)]):
                if isinstance(number, (int, float)) and not isinstance(number, bool):
                    flat[f"{key}/{name}" if name else key] = number
        return flat

    def hooks(self) -> List[Hook]:
        """The task's own hooks (e.g. pretraining's encoder export after each checkpoint), after the built-in ones."""
        return []

    def trainer_options(self) -> Dict:
        """Further Trainer arguments: collate_fn, checkpoint_meta, data_name, find_unused_parameters."""
        return {}

    def evaluate(self, evaluator: DatasetEvaluator, model: nn.Module) -> Dict[str, float]:
        """Every process: evaluate `model` with `evaluator` on the first eval.max_images images; keeps the results
        in `results` (main process) and returns their scalars."""
        e = self.cfg.eval
        self.results = inference_on_dataset(model, evaluator, max_images=int(e.max_images),
                                            num_workers=int(e.num_workers), amp=str(e.amp))
        return self.scalars(self.results)


def run_task(task: Task, eval_only: bool = False, checkpoint: Optional[str] = None,
             init_checkpoint: Optional[str] = None, hooks: Sequence[Hook] = ()) -> Any:
    """Train `task` (from `init_checkpoint`, by default train.init_checkpoint) and evaluate it, or (eval_only)
    evaluate the trained model in `checkpoint`; returns `task.results` (on the main process; {} on the others for
    tasks that evaluate).
    init_checkpoint: the file that train.init_checkpoint names, as the tool resolved it (released names, hub ids and
    the demo encoder become files; the config keeps the name).
    hooks: the caller's own hooks, after the built-in ones, the task's and the config's (train.hooks)."""
    cfg = task.cfg
    configured = [] if eval_only else configured_hooks(cfg.train)  # a wrong path is found before anything runs
    device = setup_process(cfg.train)  # before anything is written, so that only rank 0 writes
    if dist.is_main_process():
        task.prepare_data()
    dist.barrier()
    model = task.build(eval_only)
    evaluator = task.build_evaluator()
    evaluate = None if evaluator is None else (lambda m: task.evaluate(evaluator, m))
    if eval_only:
        evaluate_checkpoint(model, task.load_trained, checkpoint, cfg, device, evaluate, task.name,
                            getattr(task.val_set, "num_classes", None))
        return task.results
    if cfg.train.save_best and evaluator is None:
        raise ConfigError(f"train.save_best={cfg.train.save_best}: this task does not evaluate")
    init = init_checkpoint or cfg.train.init_checkpoint
    if init:
        task.load_pretrained(model, init, bool(cfg.train.unsafe_load))
    if task.sync_batchnorm:
        model = dist.sync_batchnorm(model, device, task.sync_batchnorm)
    trainer = Trainer(cfg, model, task.param_groups(model), task.train_set, task.loss_fn(), str(cfg.train.output_dir),
                      evaluate_fn=evaluate, stage=task.stage, device=device, **task.trainer_options())
    trainer.register_hooks(build_hooks(trainer, task.hooks(), configured, hooks))
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
