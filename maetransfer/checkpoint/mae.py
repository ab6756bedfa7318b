"""Official MAE releases, bare timm state dicts and this project's own training checkpoints (one naming for all)."""
import argparse
from typing import Tuple

from .core import LoadedCheckpoint, StateDict

_ENCODER_TOP = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
_DECODER_TOP = ("mask_token", "decoder_")
_HEAD_TOP = ("fc_norm.", "head.")


def _parse_official(state: StateDict, rest: dict, prefix: str, source: str) -> LoadedCheckpoint:
    encoder, decoder, head, other = {}, {}, {}, {}
    parent = prefix[:-1].rpartition(".")[0]
    # The decoder of a pretraining model sits beside the encoder ('encoder.' + 'decoder_*') or under 'decoder.'.
    decoder_prefixes = [p for p in (prefix, parent + "." if parent else "", "decoder.") if p]
    for key, value in state.items():
        local = key[len(prefix):] if key.startswith(prefix) else None
        if local is not None and local.startswith(_ENCODER_TOP):
            encoder[local] = value
        elif local is not None and local.startswith(_HEAD_TOP):
            head[local] = value
        else:
            bare = key
            for p in decoder_prefixes:
                if bare.startswith(p) and bare[len(p):].startswith(_DECODER_TOP):
                    bare = bare[len(p):]
                    break
            if bare.startswith(_DECODER_TOP):
                decoder[bare] = value
            else:
                other[key] = value
    if prefix == "" and rest is None:
        fmt = "timm"
    elif prefix == "" and "config" not in rest:
        fmt = "mae"
    else:
        fmt = "maetransfer"
    return LoadedCheckpoint(encoder, decoder, head, fmt, source, other=other, meta=_meta_from(rest or {}))


def _find_key(tree, names: Tuple[str, ...]):
    """First value stored under one of `names` anywhere in a nested dict / Namespace (config or args)."""
    if isinstance(tree, argparse.Namespace):
        tree = vars(tree)
    if isinstance(tree, dict):
        for name in names:
            if name in tree and not isinstance(tree[name], (dict, argparse.Namespace)):
                return tree[name]
        for value in tree.values():
            found = _find_key(value, names)
            if found is not None:
                return found
    return None


def _meta_from(rest: dict) -> dict:
    meta = {}
    source = rest.get("config", rest.get("args"))
    if source is None:
        return meta
    heads = _find_key(source, ("num_heads",))
    if heads is not None:
        meta["num_heads"] = int(heads)
    dec_heads = _find_key(source, ("decoder_num_heads",))
    if dec_heads is not None:
        meta["decoder_num_heads"] = int(dec_heads)
    arch = _find_key(source, ("model", "arch"))
    if isinstance(arch, str):
        meta["arch"] = arch
    for name in ("norm_pix_loss", "mask_ratio"):  # pretraining settings, carried into a HF config
        value = _find_key(source, (name,))
        if value is not None:
            meta[name] = value
    return meta


def to_mae(ckpt: LoadedCheckpoint) -> dict:
    return {"model": {**ckpt.encoder, **ckpt.decoder, **ckpt.head}}


def to_timm(ckpt: LoadedCheckpoint) -> StateDict:
    # No decoder: timm's checkpoint filter takes a top-level 'mask_token' for a DINOv2 file.
    return {**ckpt.encoder, **ckpt.head}

