"""Classifiers on the project ViT for the three transfer protocols of the MAE paper.

finetune  every parameter trains; global average pooling + fc_norm (official default) or the cls token + norm.
linear    frozen encoder; the cls feature -> BatchNorm1d(affine=False, eps=1e-6) -> linear head. The head is an
          nn.Sequential so its keys are the official `head.0.running_mean/running_var/num_batches_tracked`,
          `head.1.weight/bias`; head init trunc_normal std 0.01 (official main_linprobe, after MoCo v3).
partial   the last k blocks, the final norm (norm or fc_norm) and the head train (paper Fig. 9); with k = 0 only
          the norm's per-channel affine and the head train, which is still a linear classifier of frozen features.
"""
import torch.nn as nn
from timm.layers import trunc_normal_

from ..config import ConfigError
from ..models import VisionTransformer, build_vit

MODES = ("finetune", "linear", "partial")


def build_classifier(model_cfg, num_classes: int, img_size: int) -> VisionTransformer:
    """The classifier for `model_cfg.mode`, with `requires_grad` set so that only the trained parts are tuned."""
    mode = model_cfg.mode
    if mode not in MODES:
        raise ConfigError(f"model.mode '{mode}' is not one of {', '.join(MODES)}")
    if model_cfg.global_pool not in ("avg", "token"):
        raise ConfigError(f"model.global_pool '{model_cfg.global_pool}' must be 'avg' or 'token'")
    arch = {k: model_cfg[k] for k in ("patch_size", "embed_dim", "depth", "num_heads") if model_cfg[k] is not None}
    model = build_vit(model_cfg.arch, img_size=img_size, num_classes=num_classes,
                      global_pool=model_cfg.global_pool, drop_path_rate=float(model_cfg.drop_path_rate),
                      grad_checkpointing=bool(model_cfg.grad_checkpointing), **arch)
    if mode == "linear":
        trunc_normal_(model.head.weight, std=0.01)
        model.head = nn.Sequential(nn.BatchNorm1d(model.embed_dim, affine=False, eps=1e-6), model.head)
    set_trainable(model, mode, int(model_cfg.partial_blocks))
    # Frozen blocks are a fixed feature extractor: no drop path there (the official linear probe builds its encoder
    # without it); the blocks that train keep their rates.
    for block in model.blocks:
        if not any(p.requires_grad for p in block.parameters()):
            block.drop_path1 = block.drop_path2 = nn.Identity()
    return model


def trainable_prefixes(model: VisionTransformer, mode: str, partial_blocks: int = 0) -> tuple:
    """Parameter-name prefixes that train in `mode` (empty tuple = everything)."""
    if mode == "finetune":
        return ()
    if mode == "linear":
        return ("head.",)
    if not 0 <= partial_blocks <= model.depth:
        raise ConfigError(f"model.partial_blocks={partial_blocks}: must be between 0 and the depth {model.depth}")
    blocks = tuple(f"blocks.{i}." for i in range(model.depth - partial_blocks, model.depth))
    return blocks + ("norm.", "fc_norm.", "head.")


def set_trainable(model: VisionTransformer, mode: str, partial_blocks: int = 0) -> None:
    prefixes = trainable_prefixes(model, mode, partial_blocks)
    for name, p in model.named_parameters():
        if name == "pos_embed" and not prefixes:
            continue  # keep the ViT's choice (a fixed sin-cos table stays fixed)
        p.requires_grad = not prefixes or name.startswith(prefixes)
