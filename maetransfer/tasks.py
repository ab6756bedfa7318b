"""The task table: every task of the toolkit, declared once. A task is its engine `Task` (config -> data, model,
evaluator; `engine.runner`), its training tool, its recipes' folder and demo, its predictor, and what the transfer
report shows of its results. The command line, predict, the report and the Slurm launcher look tasks up here; a
config names its task with its top-level `task:` key (set by each task's base.yaml).

The classes are named by import path and imported when used, so that `--help` and the report need no torch. A new
task is one more entry here and its own modules; nothing in the engine changes.
"""
import importlib
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    name: str              # the config's `task:` value
    noun: str              # in messages: "a <noun> recipe"
    title: str             # as the report titles its section
    tool: str              # tools/<tool>.py trains and evaluates it
    demo_config: str       # the tool's default recipe: the CPU demo
    output_root: str       # runs go to <output_root>/<config name> when the config names no output folder
    task_class: str        # "module:Class" of its `engine.Task`
    predictor: str = ""    # "module:Class" of its `predict.Predictor`; "" for none
    # What the transfer report shows: metrics.json entries of its table (dotted for nested ones) with titles, the
    # headline ones that get deltas, a "module:function" reading per-class results from an output folder, and glob
    # patterns of the pictures of an output folder.
    metrics: Tuple[Tuple[str, str], ...] = ()
    headline: Tuple[str, ...] = ()
    per_class: str = ""
    pictures: Tuple[str, ...] = ()

    @property
    def transfers(self) -> bool:
        """Whether it is a transfer task (it starts from an encoder and has a predictor)."""
        return bool(self.predictor)

    def load(self, attribute: str) -> Any:
        """The object that the "module:name" field `attribute` names, imported now."""
        module, _, name = getattr(self, attribute).partition(":")
        return getattr(importlib.import_module(module), name)


TASKS: Dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("pretrain", "pretraining", "MAE pretraining", "pretrain_mae", "configs/pretrain/demo.yaml", "output/pretrain",
             "pretrain.main:PretrainingTask"),
    TaskSpec("det", "detection", "Object detection and instance segmentation (Mask R-CNN)", "train_det", "configs/det/demo.yaml",
             "output/det", "maetransfer.det.train:DetectionTask", "maetransfer.predict.det:DetectionPredictor",
             (("bbox.AP", "box AP"), ("bbox.AP50", "box AP50"), ("bbox.AP75", "box AP75"),
              ("segm.AP", "mask AP"), ("segm.AP50", "mask AP50"), ("segm.AP75", "mask AP75")),
             ("bbox.AP", "segm.AP"), "maetransfer.report.results:detection_per_class", ("predictions.png",)),
    TaskSpec("seg", "segmentation", "Semantic segmentation (UperNet)", "train_seg", "configs/seg/demo.yaml", "output/seg",
             "maetransfer.seg.train:SegmentationTask", "maetransfer.predict.seg:SegmentationPredictor",
             (("mIoU", "mIoU"), ("mAcc", "mAcc"), ("aAcc", "aAcc")), ("mIoU",),
             "maetransfer.report.results:segmentation_per_class", ("vis/*.png",)),
    TaskSpec("cls", "classification", "Classification", "train_cls", "configs/cls/demo.yaml", "output/cls",
             "maetransfer.cls.train:ClassificationTask", "maetransfer.predict.cls:ClassificationPredictor",
             (("top1", "top-1"), ("top5", "top-5"), ("mean_class_acc", "mean per-class")), ("top1",),
             "maetransfer.report.results:classification_per_class", ("confusion_matrix.png",)),
)}
TOOLS: Dict[str, TaskSpec] = {spec.tool: spec for spec in TASKS.values()}
TASK_NAMES: Dict[str, str] = {name: spec.noun for name, spec in TASKS.items()}


def task_spec(name: str, source: str = "config") -> TaskSpec:
    """The task called `name`; ConfigError naming `source` when there is none."""
    if name not in TASKS:
        raise ConfigError(f"{source}: task {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]


def declared_task(cfg: DictConfig, source: str = "config") -> TaskSpec:
    """The task that a config declares (its top-level `task:`)."""
    name: Optional[str] = OmegaConf.select(cfg, "task")
    if not name:
        raise ConfigError(f"{source}: the config names no task (a top-level 'task:' key, one of {', '.join(TASKS)}; "
                          "the recipes under configs/ and every run's config.yaml have it)")
    return task_spec(str(name), source)
