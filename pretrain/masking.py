"""Mask samplers of the paper's ablation (Table 1(f)), expressed as per-patch noise.

`random_masking` keeps the patches with the smallest noise, so every sampler only has to give the kept patches
lower noise than the removed ones: the shuffle/restore machinery stays the official one for all of them.
"""
import math
from typing import Tuple

import torch


def _exact_count(mask: torch.Tensor, num_masked: int, generator=None) -> torch.Tensor:
    """Top up or trim a boolean mask (L,) at random so it removes exactly `num_masked` patches (batches need
    the same number of visible tokens per sample)."""
    order = torch.rand(mask.numel(), generator=generator)
    # Masked patches first (lowest keys), random order inside each class.
    keys = order + (~mask).float()
    out = torch.zeros_like(mask)
    out[torch.argsort(keys)[:num_masked]] = True
    return out


def block_mask(grid: Tuple[int, int], num_masked: int, min_patches: int = 16, min_aspect: float = 0.3,
               generator=None) -> torch.Tensor:
    """BEiT block-wise masking: add random rectangles (area >= min_patches, log-uniform aspect ratio) until
    `num_masked` patches are covered. Returns a boolean (h*w,) mask, True = removed."""
    h, w = grid
    mask = torch.zeros(h, w, dtype=torch.bool)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10 * h * w):  # bounded: each round covers at least one new patch or is retried
        remaining = num_masked - int(mask.sum())
        if remaining <= 0:
            break
        u = torch.rand(3, generator=generator).tolist()
        area = min_patches + u[0] * (max(remaining, min_patches) - min_patches)
        aspect = math.exp(log_aspect[0] + u[1] * (log_aspect[1] - log_aspect[0]))
        bh = max(1, min(h, int(round(math.sqrt(area * aspect)))))
        bw = max(1, min(w, int(round(math.sqrt(area / aspect)))))
        top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
        mask[top:top + bh, left:left + bw] = True
    return _exact_count(mask.flatten(), num_masked, generator)


def grid_keep(grid: Tuple[int, int], mask_ratio: float) -> torch.Tensor:
    """Grid sampling: keep the top-left patch of every k x k cell, k = sqrt(1 / (1 - mask_ratio)).
    Returns a boolean (h*w,) mask, True = removed."""
    k = round(math.sqrt(1.0 / (1.0 - mask_ratio)))
    if abs(1.0 - 1.0 / k ** 2 - mask_ratio) > 1e-6:
        raise ValueError(f"grid masking needs mask_ratio = 1 - 1/k^2 (0.75, 0.889, ...), got {mask_ratio}")
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ~((rows % k == 0) & (cols % k == 0)).flatten()


def mask_noise(sampler: str, batch: int, grid: Tuple[int, int], mask_ratio: float, device) -> torch.Tensor:
    """(batch, h*w) noise whose smallest `int(L * (1 - mask_ratio))` entries are the visible patches."""
    length = grid[0] * grid[1]
    if sampler == "random":
        return torch.rand(batch, length, device=device)
    num_masked = length - int(length * (1 - mask_ratio))
    if sampler == "block":
        masks = torch.stack([block_mask(grid, num_masked) for _ in range(batch)])
    elif sampler == "grid":
        masks = grid_keep(grid, mask_ratio).expand(batch, -1)
        if int(masks[0].sum()) != num_masked:
            masks = torch.stack([_exact_count(m, num_masked) for m in masks])
    else:
        raise ValueError(f"unknown mask sampler '{sampler}': expected random, block or grid")
    return (masks.float() + 0.5 * torch.rand(batch, length)).to(device)
