"""Masked Autoencoder (He et al. 2021) with the official state-dict layout.

The encoder *is* `maetransfer.models.VisionTransformer` (same blocks as every downstream task), so the released
`_full` / `visualize` checkpoints load with strict=True and the encoder part can be handed to any transfer tool.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from maetransfer.models.pos_embed import interpolate_pos_embed, sincos_2d
from maetransfer.models.vit import Block, LayerNorm, VisionTransformer, vit_size

from .masking import mask_noise


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, h*w, p*p*C), channel-last inside a patch (official order)."""
    n, c, H, W = imgs.shape
    h, w = H // p, W // p
    x = imgs.reshape(n, c, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, h * w, p * p * c)


def unpatchify(x: torch.Tensor, p: int, grid: Tuple[int, int], channels: int = 3) -> torch.Tensor:
    """(N, h*w, p*p*C) -> (N, C, h*p, w*p)."""
    h, w = grid
    x = x.reshape(x.shape[0], h, w, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, h * p, w * p)


class MaskedAutoencoderViT(VisionTransformer):
    """MAE: ViT encoder on the visible patches + light decoder with shared mask tokens; MSE on removed patches.

    mask_sampler: 'random' (paper default), 'block' (BEiT-style block-wise) or 'grid' (keep one patch of every
    k x k cell); paper Table 1(f). mask_tokens_in_encoder: the Table 1(c) ablation where the encoder sees every
    patch with removed ones replaced by a learned token (adds `encoder_mask_token`, ~3x the encoder FLOPs).
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_pix_loss: bool = False,
                 mask_sampler: str = "random", mask_tokens_in_encoder: bool = False, drop_path_rate: float = 0.0,
                 grad_checkpointing: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
                         pos_embed="sincos", grad_checkpointing=grad_checkpointing)
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss
        self.mask_sampler = mask_sampler
        self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if mask_tokens_in_encoder else None

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_2d(decoder_embed_dim, self.grid_size, cls_token=True),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)
        self.init_weights()
        nn.init.normal_(self.mask_token, std=0.02)
        if self.encoder_mask_token is not None:
            nn.init.normal_(self.encoder_mask_token, std=0.02)

    def no_weight_decay(self) -> set:
        """No exemption by name: the official pretraining decays cls_token and mask_token like the weight matrices
        (main_pretrain.py builds its groups with timm's add_weight_decay and no skip list, so only 1-D tensors are
        exempt); the sin-cos tables do not train."""
        return set()

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        return unpatchify(x, self.patch_size, grid, self.in_chans)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
        """Keep the `int(L * (1 - mask_ratio))` patches with the smallest noise (official algorithm).

        Returns the kept tokens (N, len_keep, D), the binary mask (N, L; 0 keep, 1 remove, in patch order) and
        ids_restore (N, L) that un-shuffles [kept, removed] back to patch order.
        """
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: Optional[torch.Tensor] = None):
        x, grid = self.embed_patches(imgs)
        n, length, _ = x.shape
        if noise is None:
            noise = mask_noise(self.mask_sampler, n, grid, mask_ratio, x.device)
        if self.encoder_mask_token is None:
            x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        else:
            _, mask, _ = self.random_masking(x[..., :1], mask_ratio, noise)
            pos = self.pos_embed_for(grid)[:, 1:]
            x = torch.where(mask.bool().unsqueeze(-1), self.encoder_mask_token + pos, x)
            ids_restore = torch.arange(length, device=x.device).expand(n, -1)
        x = self.prepend_cls(x, self.pos_embed_for(grid))
        for block in self.blocks:
            x = self.run_block(block, x, None)
        return self.norm(x), mask, ids_restore, grid

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        x = self.decoder_embed(x)
        n, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1)
        pos = self.decoder_pos_embed
        if tuple(grid) != self.grid_size:
            pos = interpolate_pos_embed(pos, grid, self.grid_size)
        x = x + pos
        for block in self.decoder_blocks:
            x = self.run_block(block, x, None)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over removed patches of the per-patch MSE; targets normalised per patch with `norm_pix_loss`."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: Optional[torch.Tensor] = None):
        latent, mask, ids_restore, grid = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore, grid)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def encoder_state_dict(self) -> dict:
        """The encoder alone, in the layout of the released `mae_pretrain_vit_*.pth` files."""
        skip = ("decoder_", "mask_token", "encoder_mask_token")
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}


def build_mae(arch: str = "vit_base", **kwargs) -> MaskedAutoencoderViT:
    """MAE for a named encoder size (`vit_base`, `vit_large`, `vit_huge`, small ones for tests); kwargs override."""
    return MaskedAutoencoderViT(**{**vit_size(arch), **kwargs})


def mae_vit_base_patch16(**kwargs) -> MaskedAutoencoderViT:
    return build_mae("vit_base", **kwargs)


def mae_vit_large_patch16(**kwargs) -> MaskedAutoencoderViT:
    return build_mae("vit_large", **kwargs)


def mae_vit_huge_patch14(**kwargs) -> MaskedAutoencoderViT:
    return build_mae("vit_huge", **kwargs)


def mae_from_checkpoint(path, unsafe: bool = False, num_heads: Optional[int] = None,
                        decoder_num_heads: Optional[int] = None) -> MaskedAutoencoderViT:
    """An MAE (encoder + decoder) rebuilt from any checkpoint that has a decoder: released `_full` and
    `mae_visualize_*` files, our pretraining checkpoints, HF ViTMAEForPreTraining folders. Head counts are read
    from the file or its known size; give them for custom sizes."""
    from maetransfer.checkpoint import (CheckpointError, decoder_num_heads_of, encoder_arch, num_heads_of,
                                        read_checkpoint)
    ckpt = read_checkpoint(path, unsafe)
    if not ckpt.decoder:
        raise CheckpointError(f"{path}: has no MAE decoder (an encoder-only or fine-tuned file); reconstructions "
                              "need a `_full`, `mae_visualize_*` or pretraining checkpoint")
    arch = encoder_arch(ckpt.encoder, str(path))
    dec_blocks = {int(k.split(".")[1]) for k in ckpt.decoder if k.startswith("decoder_blocks.")}
    model = MaskedAutoencoderViT(
        img_size=arch["grid"][0] * arch["patch_size"], patch_size=arch["patch_size"], in_chans=arch["in_chans"],
        embed_dim=arch["embed_dim"], depth=arch["depth"], num_heads=num_heads_of(ckpt, arch, num_heads),
        decoder_embed_dim=ckpt.decoder["decoder_embed.weight"].shape[0], decoder_depth=len(dec_blocks),
        decoder_num_heads=decoder_num_heads_of(ckpt, decoder_num_heads),
        norm_pix_loss=bool(ckpt.meta.get("norm_pix_loss", False)))
    model.load_state_dict({**ckpt.encoder, **ckpt.decoder}, strict=True)
    return model
