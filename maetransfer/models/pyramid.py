"""Feature pyramids that turn the single-scale ViT into multi-scale maps for dense prediction.

`SimpleFeaturePyramid` is ViTDet's (detectron2 modeling/backbone/vit.py): one stride-16 map from the last block.
Its module names (`simfp_{stage}.{idx}`, conv norms under `.norm`) equal detectron2's so that ViTDet checkpoints
map by a prefix change only. `MultiLevelPyramid` is the MAE paper / mmseg neck (mmseg `Feature2Pyramid`, BEiT
`fpn1..4`): four maps from blocks at depth/4 steps, each rescaled, channels unchanged; names equal mmseg's.
"""
import math
from collections import OrderedDict
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d


def build_norm(norm: str, channels: int) -> nn.Module:
    """Norm layer by detectron2/mmseg name: 'LN' (channels-first LayerNorm, eps 1e-6), 'BN', 'SyncBN', 'GN'
    (32 groups) or '' (none)."""
    if norm == "LN":
        return LayerNorm2d(channels, eps=1e-6)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm == "":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}: expected 'LN', 'BN', 'SyncBN', 'GN' or ''")


class ConvNorm(nn.Conv2d):
    """Convolution, a norm held as `.norm`, then an optional activation: detectron2's `layers.Conv2d` layout (`weight`,
    `bias` only without a norm, `norm.*`), so detectron2 checkpoints load by name."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str = "",
                 activation: nn.Module = None, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, bias=norm == "", **kwargs)
        self.norm = build_norm(norm, out_channels)
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(super().forward(x)))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet pyramid from one stride-`in_stride` map: returns {'p2'..'p5'[, 'p6']} with `out_channels` each.

    4x: ConvT(D, D/2) norm GELU ConvT(D/2, D/4); 2x: ConvT(D, D/2); 1x: identity; 0.5x: max-pool 2; then a 1x1 and a
    3x3 convolution (no bias when normed) to `out_channels`. `top_block` adds p6 = max_pool2d(p5, 1, stride 2)
    (detectron2 LastLevelMaxPool).
    """

    def __init__(self, in_channels: int, out_channels: int = 256, scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
                 norm: str = "LN", top_block: bool = True, in_stride: int = 16):
        super().__init__()
        self.out_channels = out_channels
        self.scale_factors = tuple(float(s) for s in scale_factors)
        strides = [int(in_stride / s) for s in self.scale_factors]
        for a, b in zip(strides, strides[1:]):
            if b != 2 * a:
                raise ValueError(f"pyramid strides {strides} are not consecutive powers of two")
        self.stage_names = []
        dim = in_channels
        for scale, stride in zip(self.scale_factors, strides):
            if scale == 4.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), build_norm(norm, dim // 2), nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)]
                out_dim = dim // 4
            elif scale == 2.0:
                layers, out_dim = [nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)], dim // 2
            elif scale == 1.0:
                layers, out_dim = [], dim
            elif scale == 0.5:
                layers, out_dim = [nn.MaxPool2d(2, stride=2)], dim
            else:
                raise ValueError(f"unsupported pyramid scale factor {scale}: expected 4, 2, 1 or 0.5")
            layers += [ConvNorm(out_dim, out_channels, 1, norm),
                       ConvNorm(out_channels, out_channels, 3, norm, padding=1)]
            name = f"simfp_{int(math.log2(stride))}"
            self.add_module(name, nn.Sequential(*layers))
            self.stage_names.append(name)
        self.top_block = top_block
        self.strides = OrderedDict((f"p{int(math.log2(s))}", s) for s in strides)
        if top_block:
            self.strides[f"p{int(math.log2(strides[-1])) + 1}"] = strides[-1] * 2

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        outs = [getattr(self, name)(x) for name in self.stage_names]
        if self.top_block:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return OrderedDict(zip(self.strides, outs))


class MultiLevelPyramid(nn.Module):
    """MAE-paper / mmseg `Feature2Pyramid`: rescale four stride-16 maps by 4, 2, 1, 0.5 (strides 4, 8, 16, 32).

    4x: ConvT(D, D) norm GELU ConvT(D, D); 2x: ConvT(D, D); 1x: identity; 0.5x: max-pool 2. Channels stay D.
    """

    _ops = {4.0: "upsample_4x", 2.0: "upsample_2x", 1.0: "identity", 0.5: "downsample_2x"}

    def __init__(self, in_channels: int, norm: str = "BN", scale_factors: Sequence[float] = (4, 2, 1, 0.5),
                 in_stride: int = 16):
        super().__init__()
        self.scale_factors = tuple(float(s) for s in scale_factors)
        for scale in self.scale_factors:
            if scale not in self._ops:
                raise ValueError(f"unsupported pyramid scale factor {scale}: expected 4, 2, 1 or 0.5")
        d = in_channels
        if 4.0 in self.scale_factors:
            self.upsample_4x = nn.Sequential(nn.ConvTranspose2d(d, d, 2, stride=2), build_norm(norm, d), nn.GELU(),
                                             nn.ConvTranspose2d(d, d, 2, stride=2))
        if 2.0 in self.scale_factors:
            self.upsample_2x = nn.Sequential(nn.ConvTranspose2d(d, d, 2, stride=2))
        if 1.0 in self.scale_factors:
            self.identity = nn.Identity()
        if 0.5 in self.scale_factors:
            self.downsample_2x = nn.MaxPool2d(2, stride=2)
        self.out_channels = [d] * len(self.scale_factors)
        self.strides = [int(in_stride / s) for s in self.scale_factors]

    def forward(self, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(maps) != len(self.scale_factors):
            raise ValueError(f"MultiLevelPyramid expects {len(self.scale_factors)} maps, got {len(maps)}")
        return [getattr(self, self._ops[s])(m) for s, m in zip(self.scale_factors, maps)]


def vit_out_indices(depth: int, n: int = 4) -> List[int]:
    """Blocks at depth/n steps feeding a multi-level pyramid (Li et al. 2021, MAE paper Table 4): [d/4-1, d/2-1,
    3d/4-1, d-1], e.g. ViT-B 2, 5, 8, 11 and ViT-L 5, 11, 17, 23. mmseg's MAE/BEiT ADE20K configs use other blocks
    (ViT-B 3, 5, 7, 11); those configs list them explicitly."""
    if depth % n:
        raise ValueError(f"depth {depth} is not divisible into {n} equal stages")
    step = depth // n
    return [step * (i + 1) - 1 for i in range(n)]
