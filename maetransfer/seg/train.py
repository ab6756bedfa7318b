"""Segmentation transfer run: ADE20K-layout data + UperNet on the shared engine, then mIoU evaluation."""
import json
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from omegaconf import DictConfig

from ..checkpoint import CheckpointError, load_encoder_state, load_into, read_checkpoint
from ..config import ConfigError
from ..data.ade import ADE20K_CLASSES, ADE20KDataset, SegTrainTransform, collate_train, write_demo_ade20k
from ..engine import Trainer, dist, evaluate_checkpoint, setup_process
from ..optim import param_groups
from .evaluate import evaluate_segmentation
from .metric import format_table
from .segmentor import EncoderDecoder, build_segmentor



class SegLoss:
    """loss_fn for the engine: decode-head CE + weighted auxiliary CE (the model computes both)."""

    def __call__(self, model: nn.Module, batch: Dict, device: torch.device):
        losses = model(batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True))
        total = sum(v for k, v in losses.items() if "loss" in k)
        return total, {k: v.detach() for k, v in losses.items()}


def class_names(cfg: DictConfig) -> List[str]:
    names = list(cfg.data.class_names) if cfg.data.class_names else list(ADE20K_CLASSES)
    if len(names) != int(cfg.model.num_classes):
        raise ConfigError(f"data.class_names has {len(names)} names but model.num_classes is {cfg.model.num_classes}")
    return names


def load_segmentor(model: EncoderDecoder, path: str, unsafe: bool = False) -> None:
    """A trained segmentor for evaluation: this tool's checkpoint.pth or an mmseg UperNet-MAE checkpoint
    (`backbone.layers.*`, `neck.*`, `decode_head.*`); the auxiliary head is not needed and its weights are optional."""
    ckpt = read_checkpoint(path, unsafe)
    load_into(model.backbone, ckpt.encoder, source=path)
    rest = {**{f"neck.{k}": v for k, v in ckpt.neck.items()}, **ckpt.other}
    target = {k: v for k, v in model.state_dict().items() if not k.startswith(("backbone.", "auxiliary_head."))}
    rest = {k: v for k, v in rest.items() if not k.startswith("auxiliary_head.")}
    missing = sorted(set(target) - set(rest))
    unexpected = sorted(set(rest) - set(target))
    if missing or unexpected:
        raise CheckpointError(f"{path}: not a segmentor of this config ({len(missing)} tensors missing, e.g. "
                              f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    for k, v in rest.items():
        if v.shape != target[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)} but the model expects "
                                  f"{tuple(target[k].shape)} (another model.num_classes / channels?)")
    model.load_state_dict(rest, strict=False)


def write_metrics(metrics: Dict, names: List[str], output_dir: Path) -> None:
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(format_table(metrics["per_class"]))
    print(f"mIoU {metrics['mIoU']}  mAcc {metrics['mAcc']}  aAcc {metrics['aAcc']}  ({len(names)} classes)")


def run(cfg: DictConfig, eval_only: bool = False, checkpoint: Optional[str] = None,
        init_checkpoint: Optional[str] = None) -> Dict:
    """Train (unless eval_only) and evaluate; returns the metrics written to <output_dir>/metrics.json.
    init_checkpoint: the file that train.init_checkpoint names, as the tool resolved it (released names, hub ids
    and the demo encoder become files; the config keeps the name); by default train.init_checkpoint itself."""
    output_dir = Path(cfg.train.output_dir)
    device = setup_process(cfg.train)
    if cfg.data.demo and dist.is_main_process() and not (Path(cfg.data.root) / "images").is_dir():
        write_demo_ade20k(cfg.data.root, int(cfg.data.demo_train), int(cfg.data.demo_val), int(cfg.data.demo_size),
                          seed=int(cfg.train.seed))
    dist.barrier()
    names = class_names(cfg)
    ignore = int(cfg.model.ignore_index)
    common = dict(num_classes=int(cfg.model.num_classes), reduce_zero_label=bool(cfg.data.reduce_zero_label),
                  ignore_index=ignore)
    val_set = ADE20KDataset(cfg.data.root, cfg.data.val_split, **common)
    model = build_segmentor(cfg.model)

    def evaluate(m: nn.Module) -> Dict:
        metrics = evaluate_segmentation(m, val_set, cfg.eval, names, tuple(cfg.data.scale), tuple(cfg.data.mean),
                                        tuple(cfg.data.std), next(m.parameters()).device, ignore,
                                        vis_dir=output_dir / "vis", amp=cfg.eval.amp)
        if dist.is_main_process():
            write_metrics(metrics, names, output_dir)
        return metrics

    if eval_only:
        return evaluate_checkpoint(model, load_segmentor, checkpoint, cfg, device, evaluate)

    init = init_checkpoint or cfg.train.init_checkpoint
    if init:
        load_into(model.backbone, load_encoder_state(init, bool(cfg.train.unsafe_load)), source=init)
    if cfg.model.norm == "SyncBN":
        model = dist.sync_batchnorm(model, device, "model.norm=SyncBN")
    train_set = ADE20KDataset(cfg.data.root, cfg.data.train_split, transform=SegTrainTransform(cfg.data, ignore),
                              **common)
    # no_weight_decay=(): decay everything but 1-D tensors, as mmseg's LayerDecayOptimizerConstructor does in effect
    # (its 'pos_embed'/'cls_token' exemption never matches the prefixed names); lr scales as mmseg's.
    groups = param_groups(model, float(cfg.train.weight_decay), float(cfg.train.layer_decay), no_weight_decay=(),
                          num_layers=model.depth + 1)
    trainer = Trainer(cfg, model, groups, train_set, SegLoss(), str(output_dir), collate_fn=collate_train,
                      evaluate_fn=evaluate)
    return trainer.fit()
