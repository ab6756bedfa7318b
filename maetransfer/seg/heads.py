"""UPerNet decode head and FCN auxiliary head with mmseg's structure, initialisation and parameter names.

Names equal mmseg 1.x (`psp_modules.{i}.1.conv`, `bottleneck`, `lateral_convs`, `fpn_convs`, `fpn_bottleneck`,
`conv_seg`; FCN `convs`; ConvModule `conv` / `bn`), so an mmseg UperNet checkpoint's head weights load unchanged.
"""
from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.pyramid import build_norm


class ConvModule(nn.Module):
    """mmcv ConvModule: conv (no bias, followed by a norm) -> norm -> ReLU; kaiming-normal fan-out init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: str = "BN"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = build_norm(norm, out_channels)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


def resize(x: torch.Tensor, size, align_corners: bool = False) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class DecodeHead(nn.Module):
    """mmseg BaseDecodeHead's classifier: Dropout2d -> 1x1 `conv_seg` initialised N(0, 0.01)."""

    def __init__(self, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """nn.AdaptiveAvgPool2d that also exports: ONNX has adaptive pooling only for output sizes that divide the input
    (the PPM's 3 and 6 bins do not divide a 512 crop's 16 x 16 map), so while a graph is traced the same bins are
    computed as two constant averaging matrices, P_h x P_w^T, with PyTorch's bin bounds (floor(i n / k) to
    ceil((i + 1) n / k)); eager runs keep the library op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            return super().forward(x)
        out_h, out_w = (self.output_size, self.output_size) if isinstance(self.output_size, int) else self.output_size
        p_h = adaptive_pool_matrix(int(x.shape[-2]), out_h or int(x.shape[-2])).to(x)
        p_w = adaptive_pool_matrix(int(x.shape[-1]), out_w or int(x.shape[-1])).to(x)
        return torch.einsum("ih,nchw,jw->ncij", p_h, x, p_w)


def adaptive_pool_matrix(size: int, bins: int) -> torch.Tensor:
    """(bins, size): row i averages the inputs of adaptive-pooling bin i."""
    matrix = torch.zeros(bins, size)
    for i in range(bins):
        start, end = (i * size) // bins, -(-(i + 1) * size // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class PPM(nn.ModuleList):
    """Pyramid pooling: per scale adaptive average pool -> 1x1 ConvModule -> bilinear back to the input size."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int, norm: str, align_corners: bool):
        super().__init__([nn.Sequential(AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1, norm))
                          for s in pool_scales])
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [resize(m(x), x.shape[2:], self.align_corners) for m in self]


class UPerHead(DecodeHead):
    """UPerNet (Xiao et al. 2018) as mmseg's UPerHead: PPM on the last level, lateral 1x1 convs on the others,
    top-down bilinear add, 3x3 FPN convs, all levels upsampled to the finest and concatenated, 3x3 bottleneck."""

    def __init__(self, in_channels: Sequence[int], *, channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, norm: str = "BN",
                 align_corners: bool = False):
        super().__init__(channels, num_classes, dropout)
        self.align_corners = align_corners
        self.psp_modules = PPM(pool_scales, in_channels[-1], channels, norm, align_corners)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, norm)
        self.lateral_convs = nn.ModuleList([ConvModule(c, channels, 1, norm) for c in in_channels[:-1]])
        self.fpn_convs = nn.ModuleList([ConvModule(channels, channels, 3, norm) for _ in in_channels[:-1]])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, norm)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[2:], self.align_corners)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals) - 1)] + [laterals[-1]]
        outs = [outs[0]] + [resize(o, outs[0].shape[2:], self.align_corners) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(DecodeHead):
    """mmseg FCNHead on one pyramid level (`in_index`): `num_convs` 3x3 ConvModules (concat_input=False)."""

    def __init__(self, in_channels: int, *, channels: int, num_classes: int, in_index: int = 2, num_convs: int = 1,
                 dropout: float = 0.1, norm: str = "BN"):
        super().__init__(channels, num_classes, dropout)
        self.in_index = in_index
        self.convs = nn.Sequential(*[ConvModule(in_channels if i == 0 else channels, channels, 3, norm)
                                     for i in range(num_convs)])

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.cls_seg(self.convs(inputs[self.in_index]))
