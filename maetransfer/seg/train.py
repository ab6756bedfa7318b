"""Segmentation transfer run: ADE20K-layout data + UperNet on the shared engine, then mIoU evaluation."""
from collections.abc import Sequence
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig

from ..checkpoint import CheckpointError, compare_state, load_encoder_state, load_into, read_checkpoint
from ..config import ConfigError
from ..data.ade import (ADE20K_CLASSES, ADE20KDataset, SegTrainTransform, collate_train, split_folders,
                        write_demo_ade20k)
from ..data.images import MissingFileError
from ..engine import Task, run_task
from ..optim import no_decay_on, param_groups
from .evaluate import SegEvaluator
from .segmentor import EncoderDecoder, build_segmentor



class SegLoss:
    """loss_fn for the engine: decode-head CE + weighted auxiliary CE (the model computes both)."""

    def __call__(self, model: nn.Module, batch: Dict, device: torch.device):
        losses = model(batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True))
        total = sum(v for k, v in losses.items() if "loss" in k)
        return total, {k: v.detach() for k, v in losses.items()}


def class_names(cfg: DictConfig) -> List[str]:
    """The class names, index = class (with reduce_zero_label, label value - 1): the lines of
    `data.class_names_file` (one name per line, relative to data.root unless absolute) when set, since a file is
    given on purpose where `data.class_names` may be the recipe's own (the demo's shapes); else `data.class_names`,
    else ADE20K's; as many as model.num_classes."""
    d = cfg.data
    source = "data.class_names"
    if d.get("class_names_file"):
        path = Path(d.root) / str(d.class_names_file)
        if not path.is_file():
            raise MissingFileError(f"{path}: class names file not found (data.class_names_file)")
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        source = f"{path} (data.class_names_file)"
    elif d.class_names:
        names = list(d.class_names)
    else:
        names = list(ADE20K_CLASSES)
    if len(names) != int(cfg.model.num_classes):
        raise ConfigError(f"{source} has {len(names)} names but model.num_classes is {cfg.model.num_classes}")
    return names


def class_palette(cfg: DictConfig, num_classes: int) -> Optional[np.ndarray]:
    """(K, 3) uint8 colours of `data.palette` (one [r, g, b] per class, as mmseg's metainfo palette); None when it
    is empty: `seg.visualize.class_colours` then takes ADE20K's palette for its classes, distinct colours else."""
    given = cfg.data.get("palette") or []
    if not given:
        return None
    if len(given) != num_classes:
        raise ConfigError(f"data.palette has {len(given)} colours but model.num_classes is {num_classes}")
    for i, colour in enumerate(given):
        if not (isinstance(colour, Sequence) and len(colour) == 3 and
                all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)):
            raise ConfigError(f"data.palette[{i}] is {colour!r}: give each class's colour as [r, g, b] in 0..255")
    return np.array([list(c) for c in given], dtype=np.uint8)


def split_dataset(cfg: DictConfig, split: str, **kwargs) -> ADE20KDataset:
    """The dataset of `split` (data.train_split / data.val_split) in the configured layout: ADE20K's, or the user's
    data.img_dir / data.ann_dir folders with data.img_suffix / data.seg_map_suffix (docs/own-data.md)."""
    d = cfg.data
    return ADE20KDataset(d.root, split, img_dir=str(d.get("img_dir", "")), ann_dir=str(d.get("ann_dir", "")),
                         img_suffix=str(d.get("img_suffix", ".jpg")),
                         seg_map_suffix=str(d.get("seg_map_suffix", ".png")), **kwargs)


def load_segmentor(model: EncoderDecoder, path: str, unsafe: bool = False) -> None:
    """A trained segmentor for evaluation: this tool's checkpoint.pth or an mmseg UperNet-MAE checkpoint
    (`backbone.layers.*`, `neck.*`, `decode_head.*`); the auxiliary head is not needed and its weights are optional."""
    ckpt = read_checkpoint(path, unsafe)
    load_into(model.backbone, ckpt.encoder, source=path)
    rest = {**{f"neck.{k}": v for k, v in ckpt.neck.items()}, **ckpt.other}
    target = {k: v for k, v in model.state_dict().items() if not k.startswith(("backbone.", "auxiliary_head."))}
    rest = {k: v for k, v in rest.items() if not k.startswith("auxiliary_head.")}
    diff = compare_state(rest, target)
    if diff.missing or diff.unexpected:
        missing, unexpected = sorted(diff.missing), sorted(diff.unexpected)
        raise CheckpointError(f"{path}: not a segmentor of this config ({len(missing)} tensors missing, e.g. "
                              f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    if diff.reshaped:
        k = diff.reshaped[0]
        raise CheckpointError(f"{path}: {k} has shape {tuple(rest[k].shape)} but the model expects "
                              f"{tuple(target[k].shape)} (another model.num_classes / channels?)")
    model.load_state_dict(rest, strict=False)


class SegmentationTask(Task):
    """ADE20K-layout data, UperNet, mIoU; results: the metrics written to <output_dir>/metrics.json."""

    name = "seg"
    input_errors = (ValueError,)  # a label map with values outside the classes (seg.metric)

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.sync_batchnorm = "model.norm=SyncBN" if cfg.model.norm == "SyncBN" else None
        self.names = class_names(cfg)
        self.palette = class_palette(cfg, len(self.names))
        self.ignore = int(cfg.model.ignore_index)
        self.common = dict(num_classes=int(cfg.model.num_classes), reduce_zero_label=bool(cfg.data.reduce_zero_label),
                           ignore_index=self.ignore)

    @classmethod
    def check_data(cls, cfg: DictConfig, eval_only: bool) -> None:
        d = cfg.data
        if not d.demo:
            for split in (d.val_split,) if eval_only else (d.val_split, d.train_split):  # the order the run reads
                split_folders(Path(d.root), str(split), str(d.img_dir), str(d.ann_dir))

    def prepare_data(self) -> None:
        d = self.cfg.data
        if d.demo and not (Path(d.root) / "images").is_dir():
            write_demo_ade20k(d.root, int(d.demo_train), int(d.demo_val), int(d.demo_size),
                              seed=int(self.cfg.train.seed))

    def build(self, eval_only: bool) -> nn.Module:
        cfg = self.cfg
        self.val_set = split_dataset(cfg, cfg.data.val_split, **self.common)
        if not eval_only:
            self.train_set = split_dataset(cfg, cfg.data.train_split,
                                           transform=SegTrainTransform(cfg.data, self.ignore), **self.common)
        return build_segmentor(cfg.model)

    load_trained = staticmethod(load_segmentor)

    def load_pretrained(self, model: nn.Module, path: str, unsafe: bool) -> None:
        load_into(model.backbone, load_encoder_state(path, unsafe), source=path)

    def param_groups(self, model: nn.Module) -> List[Dict]:
        # no_decay_on(()): decay everything but 1-D tensors, as mmseg's LayerDecayOptimizerConstructor does in
        # effect (its 'pos_embed'/'cls_token' exemption never matches the prefixed names); lr scales as mmseg's.
        return param_groups(model, float(self.cfg.train.weight_decay), float(self.cfg.train.layer_decay),
                            no_decay=no_decay_on(()), num_layers=model.depth + 1)

    def loss_fn(self):
        return SegLoss()

    def build_evaluator(self) -> SegEvaluator:
        cfg = self.cfg
        return SegEvaluator(self.val_set, cfg.eval, self.names, cfg.data.scale, cfg.data.mean, cfg.data.std,
                            cfg.train.output_dir, self.ignore, self.palette)

    def trainer_options(self) -> Dict:
        meta = {"class_names": self.names}  # for tools/predict.py
        if self.palette is not None:
            meta["palette"] = self.palette.tolist()
        return {"collate_fn": collate_train, "checkpoint_meta": meta}


def run(cfg: DictConfig, eval_only: bool = False, checkpoint: Optional[str] = None,
        init_checkpoint: Optional[str] = None) -> Dict:
    """Train (unless eval_only) and evaluate (`engine.run_task`); returns the metrics written to metrics.json."""
    return run_task(SegmentationTask(cfg), eval_only, checkpoint, init_checkpoint)
