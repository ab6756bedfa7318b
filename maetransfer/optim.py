"""Optimizers, parameter groups with layer-wise lr decay, and per-iteration learning-rate schedules."""
import math
import re
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn
from timm.optim import Lars

# Parameters never decayed besides 1-D ones (biases, norms): position tables and learned tokens.
NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "mask_token", "rel_pos_h", "rel_pos_w", "relative_position_bias_table")

# Which parameters a recipe does not decay: rule(full parameter name, parameter) -> True for no weight decay.
NoDecayRule = Callable[[str, torch.Tensor], bool]


def no_decay_on(names: Iterable[str] = NO_WEIGHT_DECAY) -> NoDecayRule:
    """The official MAE code's and timm's rule: no decay on 1-D parameters (biases, norms) and on those with a name
    part in `names` (a model's `no_weight_decay()`)."""
    skip = frozenset(names)
    return lambda name, p: p.ndim == 1 or not skip.isdisjoint(name.split("."))


_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = ("patch_embed", "cls_token", "pos_embed")


def layer_id(name: str, num_layers: int) -> int:
    """Layer index of a parameter for lr decay, as the official `get_layer_id_for_vit` (also ViTDet and mmseg):
    embeddings 0, block i -> i + 1, everything else (norms after the blocks, necks, heads, decoder) num_layers."""
    segments = name.split(".")
    if any(s in _EMBED for s in segments):
        return 0
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    return num_layers


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                 no_decay: NoDecayRule = no_decay_on(), num_layers: Optional[int] = None) -> List[Dict]:
    """AdamW/LARS parameter groups: no decay where the recipe's `no_decay` rule says so; with layer_decay < 1 each
    group carries `lr_scale = layer_decay ** (num_layers - layer_id)`, num_layers = depth + 1."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if num_layers is None:
        depth = max((int(m.group(1)) + 1 for n, _ in named if (m := _BLOCK.search(n))), default=0)
        num_layers = depth + 1
    groups: Dict[tuple, Dict] = {}
    for name, p in named:
        exempt = no_decay(name, p)
        lid = layer_id(name, num_layers) if layer_decay != 1.0 else num_layers
        key = (lid, exempt)
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "weight_decay": 0.0 if exempt else weight_decay,
                           "lr_scale": layer_decay ** (num_layers - lid)}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def build_optimizer(train_cfg, groups: List[Dict]) -> torch.optim.Optimizer:
    """adamw / sgd / lars from the `train` config section; the lr is set per iteration by the engine."""
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    name = train_cfg.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=tuple(train_cfg.betas), weight_decay=train_cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)
    if name == "lars":
        # The official MAE LARS adapts the update of matrices only (never biases), with or without weight decay.
        for g in groups:
            g["always_adapt"] = all(p.ndim > 1 for p in g["params"])
            g["trust_clip"] = False
        return Lars(groups, lr=0.0, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)
    raise ValueError(f"unknown optimizer '{train_cfg.optimizer}': expected adamw, sgd or lars")


def base_lr(train_cfg, effective_batch: int) -> float:
    """`train.lr` when given, else the linear scaling rule lr = blr * effective_batch / 256."""
    if train_cfg.lr is not None:
        return float(train_cfg.lr)
    return float(train_cfg.blr) * effective_batch / 256


def lr_at(train_cfg, it: int, total_iters: int, iters_per_epoch: int, peak_lr: float) -> float:
    """Learning rate at iteration `it` (0-based): linear warmup from warmup_start_factor * peak, then the schedule.
    With `mmengine_schedule` the warm-up and poly count as mmengine's LinearLR and PolyLR (mmseg's recipes): each
    spans [begin, end) and reaches its end value at iteration end - 1, one iteration before MAE's and detectron2's
    (mmengine's cosine and multi-step already count as here)."""
    warmup = int(train_cfg.warmup_iters) or round(float(train_cfg.warmup_epochs) * iters_per_epoch)
    last = 1 if train_cfg.get("mmengine_schedule", False) else 0
    if it < warmup:
        start = float(train_cfg.warmup_start_factor)
        return peak_lr * (start + (1.0 - start) * it / max(1, warmup - last))
    min_lr = float(train_cfg.min_lr)
    progress = (it - warmup) / max(1, total_iters - warmup)
    schedule = train_cfg.schedule
    if schedule == "cosine":
        return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "poly":
        progress = (it - warmup) / max(1, total_iters - warmup - last)
        return min_lr + (peak_lr - min_lr) * (1.0 - progress) ** float(train_cfg.poly_power)
    if schedule == "step":
        steps = [s * total_iters if s < 1 else s for s in train_cfg.steps]
        return peak_lr * float(train_cfg.gamma) ** sum(it >= s for s in steps)
    if schedule == "constant":
        return peak_lr
    raise ValueError(f"unknown lr schedule '{schedule}': expected cosine, poly, step or constant")
