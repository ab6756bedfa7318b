"""Architecture facts read from the weights: ViT size, patch, grid and the attention head counts."""
import math
from typing import Optional

from ..sizes import VIT_SIZES
from .core import CheckpointError, LoadedCheckpoint, StateDict


def encoder_arch(encoder: StateDict, source: str = "checkpoint") -> dict:
    """embed_dim, depth, patch_size, in_chans, mlp_hidden, grid (None if not square) and cls-row flag of an encoder."""
    if "patch_embed.proj.weight" not in encoder:
        raise CheckpointError(f"{source}: encoder has no patch_embed.proj.weight")
    w = encoder["patch_embed.proj.weight"]
    depth = 1 + max((int(k.split(".")[1]) for k in encoder if k.startswith("blocks.")), default=-1)
    arch = dict(embed_dim=w.shape[0], depth=depth, patch_size=w.shape[-1], in_chans=w.shape[1], grid=None,
                cls_row=False, mlp_hidden=None)
    if "blocks.0.mlp.fc1.weight" in encoder:
        arch["mlp_hidden"] = encoder["blocks.0.mlp.fc1.weight"].shape[0]
    if "pos_embed" in encoder:
        n = encoder["pos_embed"].shape[1]
        for cls_row in (True, False):
            side = math.isqrt(n - cls_row)
            if side * side == n - cls_row:
                arch.update(grid=(side, side), cls_row=cls_row)
                break
    return arch


def num_heads_of(ckpt: LoadedCheckpoint, arch: dict, explicit: Optional[int]) -> int:
    if explicit:
        return explicit
    if ckpt.meta.get("num_heads"):
        return ckpt.meta["num_heads"]
    # A known size: by the official args.model name (e.g. 'mae_vit_base_patch16') or else by the tensor sizes.
    named = [s for n, s in VIT_SIZES.items() if n in str(ckpt.meta.get("arch", ""))]
    for size in named + list(VIT_SIZES.values()):
        if (size["embed_dim"], size["depth"]) == (arch["embed_dim"], arch["depth"]):
            return size["num_heads"]
    table = ckpt.encoder.get("blocks.0.attn.relative_position_bias_table")
    if table is not None:
        return table.shape[1]
    raise CheckpointError(f"{ckpt.source}: cannot tell the number of attention heads of a ViT with embed "
                          f"{arch['embed_dim']}/depth {arch['depth']}; pass --num-heads")


def decoder_num_heads_of(ckpt: LoadedCheckpoint, explicit: Optional[int]) -> int:
    if explicit:
        return explicit
    if ckpt.meta.get("decoder_num_heads"):
        return ckpt.meta["decoder_num_heads"]
    if ckpt.decoder["decoder_embed.weight"].shape[0] == 512:
        return 16  # every official MAE decoder: 512 wide, 16 heads
    raise CheckpointError(f"{ckpt.source}: cannot tell the number of decoder attention heads; pass "
                          f"--decoder-num-heads")
