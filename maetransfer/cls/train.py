"""Classification transfer run: datasets + classifier + loss on the shared engine, then top-k / per-class eval."""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ..checkpoint import CheckpointError, compare_state, load_encoder_state, load_into, read_checkpoint
from ..data.cls import DatasetError, build_dataset, build_transform, ensure_demo_data, split_index
from ..data.images import ROOT_HINT, MissingFileError
from ..engine import Task, run_task
from ..optim import param_groups
from .evaluate import ClassificationEvaluator
from .model import build_classifier



class ClassificationLoss:
    """loss_fn for the engine: Mixup/CutMix with soft-target CE (label smoothing folded into the mixed targets), else
    label-smoothing CE, else plain CE, as the official main_finetune."""

    def __init__(self, aug_cfg: DictConfig, num_classes: int):
        active = aug_cfg.mixup > 0 or aug_cfg.cutmix > 0 or aug_cfg.cutmix_minmax is not None
        self.mixup = None
        if active:  # with an even batch: config.check_rules
            self.mixup = Mixup(mixup_alpha=aug_cfg.mixup, cutmix_alpha=aug_cfg.cutmix,
                               cutmix_minmax=aug_cfg.cutmix_minmax, prob=aug_cfg.mixup_prob,
                               switch_prob=aug_cfg.mixup_switch_prob, mode=aug_cfg.mixup_mode,
                               label_smoothing=aug_cfg.smoothing, num_classes=num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif aug_cfg.smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=aug_cfg.smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def __call__(self, model: nn.Module, batch, device: torch.device):
        images, labels = batch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        logits = model(images)
        return self.criterion(logits, targets), {}


def load_pretrained(model: nn.Module, path: str, unsafe: bool = False) -> None:
    """Encoder weights from any format the checkpoint reader knows, pos_embed resized to the model's grid. A decoder
    or a classification head in the file is left out: the head is always new at transfer."""
    load_into(model, load_encoder_state(path, unsafe), source=path)


def load_classifier(model: nn.Module, path: str, unsafe: bool = False) -> None:
    """A complete classifier for evaluation: this tool's checkpoint.pth, a released mae_finetuned_vit_*.pth, or an
    official main_finetune / main_linprobe checkpoint. Every tensor of the model must come from the file."""
    ckpt = read_checkpoint(path, unsafe)
    state = {**ckpt.encoder, **ckpt.head}
    diff = compare_state(state, model.state_dict())
    missing, target = diff.missing, diff.expected
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; "
                              f"{_mismatch_hint(state, missing)}")
    wrong = [k for k in diff.reshaped if k.startswith("head.")]
    if wrong:
        raise CheckpointError(f"{path}: {wrong[0]} has shape {tuple(state[wrong[0]].shape)} but the model built for "
                              f"this dataset expects {tuple(target[wrong[0]].shape)}")
    load_into(model, state, source=path)


def _mismatch_hint(state: dict, missing: list) -> str:
    if not any(k.startswith("head.") for k in state):
        return "it has no classification head: fine-tune it first (train.init_checkpoint)"
    if "head.1.weight" in state and "head.weight" in missing:
        return "it holds a linear-probe head (BatchNorm head.0 + linear head.1): evaluate with model.mode=linear"
    if "head.weight" in state and "head.1.weight" in missing:
        return "it holds a fine-tuning head: evaluate with model.mode=finetune"
    return "check model.global_pool (avg uses fc_norm, token uses norm) and the model size"


class ClassificationTask(Task):
    """iNat / Places / ImageNet-layout data, the classifier (fine-tune, linear probe or partial fine-tune), top-k and
    per-class evaluation; results: the summary written to <output_dir>/metrics.json."""

    name = "cls"
    input_errors = (DatasetError,)

    @classmethod
    def check_data(cls, cfg: DictConfig, eval_only: bool) -> None:
        d = cfg.data
        if not d.demo:
            what = {"imagefolder": "image folder", "inat": "annotation file"}.get(str(d.format), "list file")
            for split in ("val",) if eval_only else ("val", "train"):  # in the order the run reads them
                index = split_index(d, split)
                if not index.exists():
                    raise MissingFileError(f"{index}: {what} not found ({ROOT_HINT})")

    def prepare_data(self) -> None:
        d = self.cfg.data
        if d.demo:
            ensure_demo_data(d.root, n_train=int(d.demo_train), n_val=int(d.demo_val),
                             size=int(self.cfg.model.img_size))

    def build(self, eval_only: bool) -> nn.Module:
        cfg = self.cfg
        self.val_set = build_dataset(cfg.data, "val", build_transform(cfg, is_train=False))
        if not eval_only:
            self.train_set = build_dataset(cfg.data, "train", build_transform(cfg, is_train=True))
            # Folder and json formats define labels by class, so both splits must name the same classes; Places
            # lists define them by number (their names are only derived from the folders).
            if (self.train_set.num_classes != self.val_set.num_classes or
                    (cfg.data.format != "places" and self.train_set.classes != self.val_set.classes)):
                raise DatasetError(f"{self.train_set.index_file} and {self.val_set.index_file} define different "
                                   f"classes ({self.train_set.num_classes} vs {self.val_set.num_classes})")
        return build_classifier(cfg.model, self.val_set.num_classes, int(cfg.model.img_size))

    load_trained = staticmethod(load_classifier)
    load_pretrained = staticmethod(load_pretrained)

    def param_groups(self, model: nn.Module) -> List[Dict]:
        return param_groups(model, float(self.cfg.train.weight_decay), float(self.cfg.train.layer_decay),
                            num_layers=model.depth + 1)

    def loss_fn(self):
        return ClassificationLoss(self.cfg.aug, self.val_set.num_classes)

    def build_evaluator(self) -> ClassificationEvaluator:
        return ClassificationEvaluator(self.val_set, self.val_set.classes, int(self.cfg.eval.batch_size),
                                       self.cfg.train.output_dir, self.val_set.index_file)

    def trainer_options(self) -> Dict:
        return {"checkpoint_meta": {"class_names": self.val_set.classes}}  # for tools/predict.py


def run(cfg: DictConfig, eval_only: bool = False, checkpoint: Optional[str] = None,
        init_checkpoint: Optional[str] = None) -> Dict:
    """Train (unless eval_only) and evaluate (`engine.run_task`); returns the summary written to metrics.json."""
    return run_task(ClassificationTask(cfg), eval_only, checkpoint, init_checkpoint)
