"""The one Vision Transformer of the project: MAE pretraining, classification, detection and segmentation all use it.

Parameter names equal the official MAE / timm encoder (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm`), so released checkpoints load unchanged.
timm provides the patch embedding, MLP, drop path and layer scale; the attention is written here because timm's
has no windowing and no relative-position terms (ViTDet decomposed rel-pos, BEiT/mmseg rel-pos bias), which the
transfer recipes need. Attention runs through `F.scaled_dot_product_attention` (fused kernels) in every mode.
"""
from functools import partial
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, to_2tuple, trunc_normal_

from ..sizes import vit_size
from .pos_embed import interpolate_pos_embed, sincos_2d

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def resize_decomposed_table(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """A (2S-1, C) decomposed relative-position table resized linearly to `length` rows (ViTDet / SAM)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    return F.interpolate(rel_pos.t()[None].float(), size=length, mode="linear")[0].t().to(rel_pos.dtype)


def resize_beit_table(table: torch.Tensor, src: Tuple[int, int], dst: Tuple[int, int], extra: int) -> torch.Tensor:
    """A BEiT bias table ((2h-1)(2w-1) [+ `extra` cls rows], heads) for grid `src` resized bicubically to `dst`;
    the cls rows are kept."""
    if tuple(src) == tuple(dst):
        return table
    spatial = table[: table.shape[0] - extra]
    src_len, dst_len = (2 * src[0] - 1, 2 * src[1] - 1), (2 * dst[0] - 1, 2 * dst[1] - 1)
    spatial = F.interpolate(spatial.t().reshape(1, -1, *src_len).float(), size=dst_len, mode="bicubic",
                            align_corners=False).reshape(-1, dst_len[0] * dst_len[1]).t().to(table.dtype)
    return torch.cat([spatial, table[table.shape[0] - extra:]], dim=0)


def _decomposed_rel_pos_table(rel_pos: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Relative-position embeddings (q_size, k_size, C) for one axis, resized linearly if the table is for another
    size (ViTDet / SAM `get_rel_pos`)."""
    max_dist = 2 * max(q_size, k_size) - 1
    rel_pos = resize_decomposed_table(rel_pos, max_dist)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def beit_relative_position_index(grid: Tuple[int, int], with_cls: bool) -> torch.Tensor:
    """BEiT / mmseg index into a ((2h-1)(2w-1) [+3]) bias table for every (query, key) pair; the 3 extra rows are
    cls->token, token->cls and cls->cls."""
    h, w = grid
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += h - 1
    rel[:, :, 1] += w - 1
    index = rel[:, :, 0] * (2 * w - 1) + rel[:, :, 1]
    if not with_cls:
        return index
    table_size = (2 * h - 1) * (2 * w - 1)
    full = torch.zeros(h * w + 1, h * w + 1, dtype=index.dtype)
    full[1:, 1:] = index
    full[0, 1:] = table_size
    full[1:, 0] = table_size + 1
    full[0, 0] = table_size + 2
    return full


class Attention(nn.Module):
    """Multi-head self-attention with optional relative-position terms.

    rel_pos=None: plain attention (MAE, timm). 'decomposed': ViTDet's per-axis tables `rel_pos_h/rel_pos_w`
    (2S-1, head_dim) for an S x S `input_size`. 'bias': a BEiT/mmseg learned bias table per head
    (`relative_position_bias_table`) for an `input_size` grid, with 3 extra entries when a cls token is present.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rel_pos: Optional[str] = None,
                 input_size: Optional[Tuple[int, int]] = None, with_cls: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos = rel_pos
        self.input_size = input_size
        if rel_pos == "decomposed":
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))
        elif rel_pos == "bias":
            self.with_cls = with_cls
            size = (2 * input_size[0] - 1) * (2 * input_size[1] - 1) + (3 if with_cls else 0)
            self.relative_position_bias_table = nn.Parameter(torch.zeros(size, num_heads))
            self.register_buffer("relative_position_index", beit_relative_position_index(input_size, with_cls),
                                 persistent=False)
        elif rel_pos is not None:
            raise ValueError(f"unknown rel_pos {rel_pos!r}: expected None, 'decomposed' or 'bias'")

    def _beit_bias(self, grid: Tuple[int, int]) -> torch.Tensor:
        table, index = self.relative_position_bias_table, self.relative_position_index
        if tuple(grid) != tuple(self.input_size):  # another input size (whole-image inference)
            table = resize_beit_table(table, self.input_size, grid, 3 if self.with_cls else 0)
            index = beit_relative_position_index(grid, self.with_cls).to(table.device)
        n = index.shape[0]
        return table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """x: (B, L, D). `grid` (h, w) is the spatial layout of the L tokens (after any prefix tokens)."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None
        if self.rel_pos == "decomposed":
            h, w = grid
            rh = _decomposed_rel_pos_table(self.rel_pos_h, h, h)
            rw = _decomposed_rel_pos_table(self.rel_pos_w, w, w)
            r_q = q.reshape(B, self.num_heads, h, w, self.head_dim)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, rh)
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, rw)
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, self.num_heads, L, L)
        elif self.rel_pos == "bias":
            bias = self._beit_bias(grid).unsqueeze(0)
        if bias is not None:
            bias = bias.to(q.dtype)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(B, L, D))


def window_partition(x: torch.Tensor, window: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, window*window, C), zero-padding H and W up to multiples of the window."""
    B, H, W, C = x.shape
    pad_h, pad_w = (window - H % window) % window, (window - W % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window, window, Wp // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C), (Hp, Wp)


def window_unpartition(x: torch.Tensor, window: int, padded: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, window*window, C) -> (B, H, W, C)."""
    Hp, Wp = padded
    B = x.shape[0] // ((Hp // window) * (Wp // window))
    x = x.view(B, Hp // window, Wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, Hp, Wp, -1)[:, : size[0], : size[1]]


class Block(nn.Module):
    """Pre-norm transformer block (timm `Block` layout and key names) with optional windowed attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, window_size: int = 0, rel_pos: Optional[str] = None,
                 input_size: Optional[Tuple[int, int]] = None, with_cls: bool = False,
                 layer_scale_init: Optional[float] = None, norm_layer=LayerNorm):
        super().__init__()
        self.window_size = window_size
        self.norm1 = norm_layer(dim)
        attn_size = (window_size, window_size) if window_size else input_size
        self.attn = Attention(dim, num_heads, qkv_bias, rel_pos, attn_size, with_cls and not window_size)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size:
            if grid is None or x.shape[1] != grid[0] * grid[1]:
                raise ValueError("windowed attention needs a spatial grid and no prefix (cls) tokens")
            size = tuple(grid)
            y, padded = window_partition(y.reshape(x.shape[0], *size, -1), self.window_size)
            y = self.attn(y, (self.window_size, self.window_size))
            y = window_unpartition(y, self.window_size, padded, size).reshape(x.shape)
        else:
            y = self.attn(y, grid)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT encoder with every option the MAE transfer recipes use.

    class_token: keep a cls token in the sequence (classification, mmseg-style backbones); ViTDet drops it.
    pos_embed: 'learned' (fine-tuning; loaded from a checkpoint) or 'sincos' (fixed, MAE pretraining). The table is
        always stored with a cls row, (1, 1 + h*w, D), in the official layout, and resized to the input grid on the fly.
    pretrain_img_size: the image size the pos_embed table is kept at (default img_size). ViTDet keeps it at the
        pretraining size (224: a 14x14 table) and interpolates it to the 64x64 grid in every forward, so a detector's
        table stays the pretrained one and exports unchanged; img_size still sizes the global-attention rel-pos.
    window_size / global_blocks: ViTDet windowed attention; blocks listed in `global_blocks` attend globally.
    rel_pos: None, 'decomposed' (ViTDet) or 'bias' (BEiT/mmseg); zero-initialised.
    layer_scale_init: None (MAE) or the LayerScale init value (mmseg's MAE backbone uses 1.0 at transfer).
    global_pool: 'token' (cls -> norm -> head) or 'avg' (mean of patch tokens -> fc_norm -> head; `norm` unused, as
        in the official fine-tuning code). num_classes=0 leaves the head out.
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 class_token: bool = True, pos_embed: str = "learned", window_size: int = 0,
                 global_blocks: Sequence[int] = (), rel_pos: Optional[str] = None,
                 layer_scale_init: Optional[float] = None, num_classes: int = 0, global_pool: str = "token",
                 grad_checkpointing: bool = False, pretrain_img_size=None):
        super().__init__()
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.global_pool = global_pool
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, strict_img_size=False,
                                      output_fmt="NHWC")
        self.grid_size = tuple(self.patch_embed.grid_size)
        pos_size = to_2tuple(pretrain_img_size or img_size)
        self.pos_grid = (pos_size[0] // patch_size, pos_size[1] // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.num_prefix_tokens = 1 if class_token else 0
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"unknown pos_embed {pos_embed!r}: expected 'learned' or 'sincos'")
        self.pos_embed = nn.Parameter(sincos_2d(embed_dim, self.pos_grid, cls_token=True),
                                      requires_grad=pos_embed == "learned")
        drop_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        global_blocks = set(global_blocks)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rates[i],
                  window_size=0 if i in global_blocks else window_size, rel_pos=rel_pos,
                  input_size=self.grid_size, with_cls=class_token, layer_scale_init=layer_scale_init)
            for i in range(depth)])
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else LayerNorm(embed_dim)
        self.fc_norm = LayerNorm(embed_dim) if use_fc_norm and num_classes else None
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else None
        self.init_weights()

    def init_weights(self):
        """MAE initialisation: xavier-uniform linears (patch embedding on its (D, -1) view), cls token N(0, .02)."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if self.pos_embed.requires_grad:
            trunc_normal_(self.pos_embed, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and m is not self.head:
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.head is not None:
            trunc_normal_(self.head.weight, std=2e-5)  # official fine-tuning head init
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"}

    # -- building blocks, also used by the MAE model ------------------------------------------------------------
    def pos_embed_for(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The (1, 1 + h*w, D) table for a grid of patches, interpolated from the stored one when the size differs."""
        if tuple(grid) == self.pos_grid:
            return self.pos_embed
        return interpolate_pos_embed(self.pos_embed, grid, self.pos_grid, num_prefix_tokens=1)

    def embed_patches(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Images (B, C, H, W) -> patch tokens with position embedding (B, h*w, D), and the grid (h, w)."""
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by the patch size {self.patch_size}")
        x = self.patch_embed(x)
        grid = (x.shape[1], x.shape[2])
        pos = self.pos_embed_for(grid)
        return x.flatten(1, 2) + pos[:, 1:], grid

    def prepend_cls(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.cls_token is None:
            return x
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def run_block(self, block: Block, x: torch.Tensor, grid: Optional[Tuple[int, int]]) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, x, grid, use_reentrant=False)
        return block(x, grid)

    # -- forward paths -------------------------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor, out_indices: Sequence[int] = ()):
        """Run the encoder; returns (final tokens, {block index: tokens after that block}, grid)."""
        tokens, grid = self.embed_patches(x)
        tokens = self.prepend_cls(tokens, self.pos_embed_for(grid))
        saved = {}
        wanted = set(out_indices)
        for i, block in enumerate(self.blocks):
            tokens = self.run_block(block, tokens, grid)
            if i in wanted:
                saved[i] = tokens
        return tokens, saved, grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, prefix + h*w, D), as timm's `forward_features`."""
        return self.norm(self.forward_tokens(x)[0])

    def forward_maps(self, x: torch.Tensor, out_indices: Sequence[int]) -> List[torch.Tensor]:
        """Outputs of the listed blocks as NCHW feature maps (prefix tokens dropped), for dense-prediction heads."""
        _, saved, (h, w) = self.forward_tokens(x, out_indices)
        p = self.num_prefix_tokens
        return [saved[i][:, p:].transpose(1, 2).reshape(x.shape[0], self.embed_dim, h, w) for i in out_indices]

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            feat = tokens[:, self.num_prefix_tokens:].mean(dim=1)
            feat = self.fc_norm(feat) if self.fc_norm is not None else feat
        else:
            feat = tokens[:, 0]
        return feat if pre_logits or self.head is None else self.head(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Model sizes: (embed_dim, depth, num_heads, patch_size). micro/demo/tiny/small exist for tests and CPU demos.
def build_vit(arch: str, **kwargs) -> VisionTransformer:
    """`build_vit('vit_base', drop_path_rate=0.1, ...)`; explicit kwargs override the size's defaults."""
    return VisionTransformer(**{**vit_size(arch), **kwargs})
