"""Position-embedding utilities shared by pretraining and every downstream task."""
from typing import Sequence, Tuple

import torch
from timm.layers import resample_abs_pos_embed


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """1-D sin-cos embedding, (M,) -> (M, embed_dim): first half sin, second half cos (MAE util/pos_embed.py)."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(embed_dim: int, grid_size: Tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding of a (rows, cols) grid in the official MAE channel order.

    The first embed_dim/2 channels encode the column index, the last embed_dim/2 the row index (the official code
    names them the other way round; the numbers are what matter for loading released weights). With `cls_token` a
    zero row is prepended. Returns float32 (1, [1 +] rows*cols, embed_dim).
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    rows, cols = grid_size
    row_idx, col_idx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    emb = torch.cat([sincos_1d(embed_dim // 2, col_idx), sincos_1d(embed_dim // 2, row_idx)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)


def interpolate_pos_embed(pos_embed: torch.Tensor, new_grid: Sequence[int], old_grid: Sequence[int] = None,
                          num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resize a (1, prefix + h*w, D) table to another grid the way MAE, detectron2, mmseg and HF do it.

    Bicubic, align_corners=False and *no* antialias: timm's default (antialias=True) gives different numbers when
    shrinking, so released fine-tuning recipes are only reproduced with antialias off.
    """
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=None if old_grid is None else list(old_grid),
                                  num_prefix_tokens=num_prefix_tokens, interpolation="bicubic", antialias=False)
