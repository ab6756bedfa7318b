"""ViT + multi-level pyramid + UPerNet segmentor (mmseg EncoderDecoder with the MAE backbone, configs/mae).

Backbone as mmseg's `MAE`: the cls token goes through the blocks and is dropped at the outputs, learned absolute
pos-embed, zero-initialised relative position bias per block (added at transfer; MAE pretraining has none), layer
scale (mmseg's class default is 0.1, configs/mae sets init_values=1.0, which we use), no final norm, features of the
raw outputs of `out_indices` blocks. Submodule names `backbone` / `neck` / `decode_head` / `auxiliary_head` are
mmseg's.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import MultiLevelPyramid, build_vit, vit_out_indices
from .heads import FCNHead, UPerHead, resize


def seg_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                      avg_non_ignore: bool = False) -> torch.Tensor:
    """mmseg CrossEntropyLoss on logits upsampled bilinearly (align_corners=False) to the label size. With
    avg_non_ignore=False (mmseg's default, used by its ADE20K results) the sum is divided by all pixels,
    ignored ones included."""
    logits = resize(logits, labels.shape[-2:])
    loss = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="none")
    if avg_non_ignore:
        return loss.sum() / (labels != ignore_index).sum().clamp(min=1)
    return loss.mean()


def pixel_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """mmseg `acc_seg`: top-1 accuracy (%) over labelled pixels, logits resized to the labels."""
    pred = resize(logits.detach(), labels.shape[-2:]).argmax(1)
    keep = labels != ignore_index
    # Counts instead of boolean indexing: no data-dependent shape, so torch.compile keeps one graph (0 without labels)
    return ((pred == labels) & keep).sum() / keep.sum().clamp(min=1) * 100.0


class EncoderDecoder(nn.Module):
    """`model(images)` -> decode-head logits at the finest pyramid stride; `model(images, labels)` -> losses
    {'loss_ce', 'aux_loss_ce' (already weighted), 'acc_seg'}; `encode_decode(images)` -> logits at image size (any
    size; mmseg's MAE backbone accepts only its img_size, hence its sliding-window test)."""

    def __init__(self, backbone: nn.Module, *, out_indices: Sequence[int], neck: nn.Module, decode_head: UPerHead,
                 auxiliary_head: Optional[FCNHead] = None, aux_weight: float = 0.4, ignore_index: int = 255,
                 avg_non_ignore: bool = False):
        super().__init__()
        self.backbone, self.neck = backbone, neck
        self.decode_head, self.auxiliary_head = decode_head, auxiliary_head
        self.out_indices = list(out_indices)
        self.aux_weight, self.ignore_index, self.avg_non_ignore = aux_weight, ignore_index, avg_non_ignore
        self.num_classes = decode_head.num_classes

    @property
    def depth(self) -> int:
        return self.backbone.depth

    def extract_feat(self, images: torch.Tensor) -> List[torch.Tensor]:
        return self.neck(self.backbone.forward_maps(images, self.out_indices))

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None):
        feats = self.extract_feat(images)
        logits = self.decode_head(feats)
        if labels is None:
            return logits
        losses = {"loss_ce": seg_cross_entropy(logits, labels, self.ignore_index, self.avg_non_ignore),
                  "acc_seg": pixel_accuracy(logits, labels, self.ignore_index)}
        if self.auxiliary_head is not None:
            aux = self.auxiliary_head(feats)
            losses["aux_loss_ce"] = self.aux_weight * seg_cross_entropy(aux, labels, self.ignore_index,
                                                                        self.avg_non_ignore)
        return losses

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        """Logits at the image size. A size that is not a multiple of the patch is zero-padded at the bottom/right
        (the mean colour after normalisation, as training pads) and the padding cut from the logits."""
        h, w = images.shape[-2:]
        p = self.backbone.patch_size
        images = F.pad(images, (0, -w % p, 0, -h % p))
        return resize(self(images), images.shape[-2:])[..., :h, :w]


def mae_backbone(arch: str = "vit_base", img_size: int = 512, drop_path_rate: float = 0.1,
                 rel_pos: Optional[str] = "bias", layer_scale_init: Optional[float] = 1.0,
                 grad_checkpointing: bool = False, **sizes) -> nn.Module:
    """The mmseg-MAE-style ViT (module docstring); `sizes` overrides embed_dim / depth / num_heads / patch_size."""
    vit = build_vit(arch, img_size=img_size, drop_path_rate=drop_path_rate, class_token=True, pos_embed="learned",
                    rel_pos=rel_pos or None, layer_scale_init=layer_scale_init, num_classes=0,
                    grad_checkpointing=grad_checkpointing, **sizes)
    # No final norm (mmseg final_norm=False): an unused LayerNorm would also leave DDP with gradient-less params.
    vit.norm = nn.Identity()
    return vit


def build_backbone(model_cfg) -> nn.Module:
    sizes = {k: model_cfg[k] for k in ("embed_dim", "depth", "num_heads", "patch_size") if model_cfg[k] is not None}
    return mae_backbone(model_cfg.arch, int(model_cfg.img_size), float(model_cfg.drop_path_rate), model_cfg.rel_pos,
                        model_cfg.layer_scale_init, bool(model_cfg.grad_checkpointing), **sizes)


def build_segmentor(model_cfg) -> EncoderDecoder:
    """The UperNet segmentor of the `model` config section (configs/seg/base.yaml documents the keys). Norm layers
    are BatchNorm; multi-process runs convert them to SyncBatchNorm when model.norm is SyncBN."""
    backbone = build_backbone(model_cfg)
    # blocks within the depth: config.check_rules
    out_indices = list(model_cfg.out_indices) if model_cfg.out_indices else vit_out_indices(backbone.depth)
    d = backbone.embed_dim
    neck = MultiLevelPyramid(d, norm="BN", scale_factors=tuple(model_cfg.scale_factors),
                             in_stride=backbone.patch_size)
    decode_head = UPerHead(neck.out_channels, channels=int(model_cfg.channels), num_classes=int(model_cfg.num_classes),
                           pool_scales=tuple(model_cfg.pool_scales), dropout=float(model_cfg.dropout), norm="BN")
    aux = None
    if int(model_cfg.aux_channels) > 0:
        aux = FCNHead(neck.out_channels[model_cfg.aux_in_index], channels=int(model_cfg.aux_channels),
                      num_classes=int(model_cfg.num_classes), in_index=int(model_cfg.aux_in_index), num_convs=1,
                      dropout=float(model_cfg.dropout), norm="BN")
    return EncoderDecoder(backbone, out_indices=out_indices, neck=neck, decode_head=decode_head, auxiliary_head=aux,
                          aux_weight=float(model_cfg.aux_weight), ignore_index=int(model_cfg.ignore_index),
                          avg_non_ignore=bool(model_cfg.avg_non_ignore))
