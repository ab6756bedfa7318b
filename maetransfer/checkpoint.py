"""Read, convert and load ViT encoder checkpoints of every format the MAE ecosystem uses.

Formats (auto-detected from the keys, see `read_checkpoint`):
  mae          official releases: {'model': encoder [+ decoder | + fc_norm/head]} (+ optimizer/epoch/args when training)
  timm         a bare timm VisionTransformer state dict (same key names as `mae`)
  maetransfer  our training checkpoints: {'model': whole task model, 'optimizer', ..., 'config'}; the encoder may sit
               under any prefix ('backbone.vit.', 'encoder.', ...) and is found by its patch-embedding key
  hf           Hugging Face ViTMAE: a `save_pretrained` folder, a .safetensors file or a state dict, in the
               transformers 4 naming (`encoder.layer.N.attention.attention.query`) or the 5 naming
               (`layers.N.attention.q_proj`); q, k, v are fused into `qkv` as rows [q; k; v]
  detectron2   ViTDet: `backbone.net.*` (no cls_token, no final norm) and the pyramid `backbone.simfp_*`; detectron2's
               .pkl files (pickled NumPy arrays) are read with a NumPy-only unpickler
  mmseg        beit2mmseg layout: `backbone.layers.N.{ln1,ln2,attn,ffn.layers.0.0,ffn.layers.1,gamma_1,gamma_2}`,
               BEiT `q_bias`/`v_bias` fused into `qkv.bias` (k bias 0), neck `neck.*` (Feature2Pyramid names)
Everything is returned in the official MAE naming (= timm = `maetransfer.models.VisionTransformer`).

Files are opened with `torch.load(weights_only=True)`, `argparse.Namespace` (official files hold `args`) and NumPy
arrays allow-listed; anything else is refused with a message naming the global unless `unsafe=True` is passed.
"""
import argparse
import json
import math
import pickle
import re
import zipfile
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from timm.layers import resample_patch_embed
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

from .models.pos_embed import interpolate_pos_embed
from .models.vit import VIT_SIZES, VisionTransformer, resize_decomposed_table

WRITE_FORMATS = ("mae", "hf", "timm", "detectron2", "mmseg")

StateDict = Dict[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message is one line naming the file."""


@dataclass
class LoadedCheckpoint:
    """A checkpoint split into parts, all in the official MAE key naming.

    encoder: cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, norm.* (plus rel-pos tables / layer scale when the
        source had them). decoder: mask_token, decoder_*. head: fc_norm.*, head.*. neck: pyramid weights in the
        names of `maetransfer.models.pyramid` (detectron2 simfp_*, mmseg upsample_*). other: keys of a task model
        that belong to none of these (detection/segmentation heads). meta: what the file says about the
        architecture and pretraining (num_heads, decoder_num_heads, norm_pix_loss, mask_ratio) when it says it.
    """
    encoder: StateDict
    decoder: StateDict = field(default_factory=dict)
    head: StateDict = field(default_factory=dict)
    format: str = "mae"
    source: str = ""
    neck: StateDict = field(default_factory=dict)
    other: StateDict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Safe reading
# ---------------------------------------------------------------------------------------------------------------
def _numpy_globals() -> list:
    """NumPy array reconstruction (plain data) for RNG states and detectron2's pickled weights."""
    core = getattr(np, "_core", None) or np.core
    dtype_classes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype] + dtype_classes


_SAFE_GLOBALS = [argparse.Namespace] + _numpy_globals()
_SAFE_PICKLE_NAMES = {f"{g.__module__}.{g.__qualname__}": g for g in _SAFE_GLOBALS}
_SAFE_PICKLE_NAMES["collections.OrderedDict"] = OrderedDict
_UNSAFE_HINT = "pass --unsafe-load (unsafe=True) only if you trust the file, since unpickling it can run code"


class _RestrictedUnpickler(pickle.Unpickler):
    """Plain pickles (detectron2 .pkl): only NumPy arrays, OrderedDict and Namespace may be constructed."""

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full in _SAFE_PICKLE_NAMES:
            return _SAFE_PICKLE_NAMES[full]
        raise pickle.UnpicklingError(f"unsafe global {full}")


def _unsafe_globals(path: Path) -> List[str]:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # the listing itself can fail on odd files; the caller still has the load error
        return []
    return [n for n in names if n not in _SAFE_PICKLE_NAMES and not n.startswith("numpy")]


def _torch_load(path: Path, unsafe: bool):
    if unsafe:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = _unsafe_globals(path) or ["an object that is not plain data"]
        raise CheckpointError(f"{path}: refused to unpickle {', '.join(names)} with weights_only loading; "
                              f"{_UNSAFE_HINT}") from None


def _pickle_load(path: Path, unsafe: bool):
    with open(path, "rb") as f:
        if unsafe:
            return pickle.load(f, encoding="latin1")
        try:
            return _RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as exc:
            if str(exc).startswith("unsafe global"):
                raise CheckpointError(f"{path}: refused to unpickle {str(exc)[len('unsafe global '):]}; "
                                      f"{_UNSAFE_HINT}") from None
            raise


def _load_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file
    return load_file(str(path))


def _read_hf_folder(path: Path, unsafe: bool) -> Tuple[StateDict, dict]:
    config = {}
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index_name).is_file():
            shards = sorted(set(json.loads((path / index_name).read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(_read_file(path / shard, unsafe))
            return state, config
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return _read_file(path / name, unsafe), config
    raise CheckpointError(f"{path}: folder has no model.safetensors or pytorch_model.bin (not a save_pretrained "
                          f"folder)")


def _read_file(path: Path, unsafe: bool):
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if zipfile.is_zipfile(path):
        return _torch_load(path, unsafe)
    obj = _pickle_load(path, unsafe)
    if isinstance(obj, int):  # the magic number that opens torch's legacy (pre-1.6) format
        return _torch_load(path, unsafe)
    return obj


def read_raw(path: Union[str, Path], unsafe: bool = False) -> Tuple[object, dict]:
    """The file's object (or a HF folder's state dict) and a HF config if there is one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        if path.is_dir():
            return _read_hf_folder(path, unsafe)
        return _read_file(path, unsafe), {}
    except CheckpointError:
        raise
    except Exception as exc:  # truncated zip, garbage bytes, bad safetensors header: one line naming the file
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: not a readable checkpoint, the file may be truncated or corrupt "
                              f"({type(exc).__name__}: {detail})") from None


# ---------------------------------------------------------------------------------------------------------------
# Parsing into official naming
# ---------------------------------------------------------------------------------------------------------------
_ENCODER_TOP = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
_DECODER_TOP = ("mask_token", "decoder_")
_HEAD_TOP = ("fc_norm.", "head.")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers

# Hugging Face ViTMAE per-layer names: official suffix -> (transformers 4 suffix, transformers 5 suffix); 'qkv' parts
# are (official suffix, row block).
_HF_LAYER = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "attn.proj": ("attention.output.dense", "attention.o_proj"),
    "mlp.fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp.fc2": ("output.dense", "mlp.fc2"),
}
_HF_QKV = (("attention.attention.query", "attention.q_proj"), ("attention.attention.key", "attention.k_proj"),
           ("attention.attention.value", "attention.v_proj"))
_HF_TOP = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
           "patch_embed.proj": "embeddings.patch_embeddings.projection", "norm": "layernorm"}
_HF_DECODER_TOP = {n: f"decoder.{n}" for n in ("mask_token", "decoder_pos_embed", "decoder_embed", "decoder_norm",
                                               "decoder_pred")}
_HF_LAYERS = ("encoder.layer.", "layers.")  # transformers 4, 5
# transformers 4 and 5 in memory; 5 saves files in the old naming, renaming 'layers' inside 'decoder_layers' too.
_HF_DECODER_LAYERS = ("decoder.decoder_layers.", "decoder.decoder_encoder.layer.")

# mmseg (beit2mmseg) per-layer names: official suffix -> mmseg suffix.
_MMSEG_LAYER = {"norm1": "ln1", "norm2": "ln2", "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1",
                "ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2"}


def _unwrap(obj, source: str) -> Tuple[StateDict, Optional[dict]]:
    """The state dict inside a checkpoint object, and the other top-level entries (None for a bare state dict)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    for key in ("model", "state_dict", "module"):
        if isinstance(obj.get(key), dict):
            state, rest = obj[key], {k: v for k, v in obj.items() if k != key}
            break
    else:
        state, rest = obj, None
    state = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: '{bad[0]}' is a {type(state[bad[0]]).__name__}, not a tensor: not a "
                              f"model state dict")
    return state, rest


def _find_prefix(state: StateDict, suffix: str, source: str) -> Optional[str]:
    prefixes = sorted({k[: -len(suffix)] for k in state if k == suffix or k.endswith("." + suffix)})
    if len(prefixes) > 1:
        raise CheckpointError(f"{source}: several encoders in one file (prefixes {', '.join(map(repr, prefixes))})")
    return prefixes[0] if prefixes else None


def _split_weight_bias(key: str) -> Tuple[str, str]:
    base, _, leaf = key.rpartition(".")
    return base, leaf


def _fuse_qkv(parts: Dict[int, torch.Tensor], key: str, source: str) -> torch.Tensor:
    if sorted(parts) != [0, 1, 2]:
        raise CheckpointError(f"{source}: {key} is missing one of query/key/value")
    return torch.cat([parts[0], parts[1], parts[2]], dim=0)


def _parse_hf_layers(state: StateDict, layer_prefix: str, out_prefix: str, source: str) -> Tuple[StateDict, StateDict]:
    """HF transformer layers under `layer_prefix` -> official `out_prefix`N.* keys; returns (mapped, leftovers)."""
    lookup = {hf: off for off, names in _HF_LAYER.items() for hf in names}
    qkv_lookup = {hf: i for i, names in enumerate(_HF_QKV) for hf in names}
    mapped, left, qkv = {}, {}, defaultdict(dict)
    pattern = re.compile(re.escape(layer_prefix) + r"(\d+)\.(.+)$")
    for key, value in state.items():
        m = pattern.match(key)
        if not m:
            left[key] = value
            continue
        idx, rest = m.groups()
        module, leaf = _split_weight_bias(rest)
        if module in lookup:
            mapped[f"{out_prefix}{idx}.{lookup[module]}.{leaf}"] = value
        elif module in qkv_lookup:
            qkv[f"{out_prefix}{idx}.attn.qkv.{leaf}"][qkv_lookup[module]] = value
        else:
            left[key] = value
    for key, parts in qkv.items():
        mapped[key] = _fuse_qkv(parts, key, source)
    return mapped, left


def _parse_hf(state: StateDict, prefix: str, config: dict, source: str) -> LoadedCheckpoint:
    # ViTMAEForPreTraining nests the encoder under 'vit.' and the decoder under 'decoder.'; ViTMAEModel has no prefix.
    state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    encoder = {}
    for off, hf in _HF_TOP.items():
        for key in [k for k in state if k == hf or k.startswith(hf + ".")]:
            encoder[off + key[len(hf):]] = state.pop(key)
    layer_prefix = next((p for p in _HF_LAYERS if any(k.startswith(p) for k in state)), _HF_LAYERS[0])
    blocks, state = _parse_hf_layers(state, layer_prefix, "blocks.", source)
    encoder.update(blocks)
    decoder = {}
    for off, hf in _HF_DECODER_TOP.items():
        for key in [k for k in state if k == hf or k.startswith(hf + ".")]:
            decoder[off + key[len(hf):]] = state.pop(key)
    for layer_prefix in _HF_DECODER_LAYERS:
        dec_blocks, state = _parse_hf_layers(state, layer_prefix, "decoder_blocks.", source)
        decoder.update(dec_blocks)
    meta = {k: config[v] for k, v in (("num_heads", "num_attention_heads"),
                                      ("decoder_num_heads", "decoder_num_attention_heads"),
                                      ("norm_pix_loss", "norm_pix_loss"), ("mask_ratio", "mask_ratio")) if v in config}
    return LoadedCheckpoint(encoder, decoder, {}, "hf", source, other=state, meta=meta)


def _parse_mmseg(state: StateDict, prefix: str, source: str) -> LoadedCheckpoint:
    encoder, neck, other, qv = {}, {}, {}, defaultdict(dict)
    inverse = {v: k for k, v in _MMSEG_LAYER.items()}
    layer = re.compile(re.escape(prefix) + r"layers\.(\d+)\.(.+)$")
    for key, value in state.items():
        m = layer.match(key)
        if m:
            idx, rest = m.groups()
            module, leaf = _split_weight_bias(rest)
            if rest in ("attn.q_bias", "attn.v_bias"):
                qv[idx][rest[5]] = value
            elif rest == "attn.relative_position_index":
                continue  # a constant buffer, rebuilt by the model
            elif rest in inverse:  # gamma_1 / gamma_2 have no weight/bias leaf
                encoder[f"blocks.{idx}.{inverse[rest]}"] = value
            elif module in inverse:
                encoder[f"blocks.{idx}.{inverse[module]}.{leaf}"] = value
            else:
                encoder[f"blocks.{idx}.{rest}"] = value
        elif key.startswith(prefix):
            rest = key[len(prefix):]
            if rest.startswith("patch_embed.projection."):
                encoder["patch_embed.proj." + rest[len("patch_embed.projection."):]] = value
            elif rest.startswith(("ln1.", "norm.")):  # final norm: mmseg's 'ln1' (final_norm=True), beit2mmseg 'norm'
                encoder["norm." + rest.split(".", 1)[1]] = value
            elif rest in ("cls_token", "pos_embed"):
                encoder[rest] = value
            else:
                other[key] = value
        elif key.startswith("neck."):
            neck[key[len("neck."):]] = value
        else:
            other[key] = value
    for idx, parts in qv.items():
        # BEiT qv_bias: q and v have a bias, k has none (zeros), exactly what a fused qkv bias of [q; 0; v] computes.
        q, v = parts["q"], parts["v"]
        encoder[f"blocks.{idx}.attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return LoadedCheckpoint(encoder, {}, {}, "mmseg", source, neck=neck, other=other)


def _parse_official(state: StateDict, rest: dict, prefix: str, source: str) -> LoadedCheckpoint:
    encoder, decoder, head, neck, other = {}, {}, {}, {}, {}
    parent = prefix[:-1].rpartition(".")[0]
    # The decoder of a pretraining model sits beside the encoder ('encoder.' + 'decoder_*') or under 'decoder.'.
    decoder_prefixes = [p for p in (prefix, parent + "." if parent else "", "decoder.") if p]
    for key, value in state.items():
        local = key[len(prefix):] if key.startswith(prefix) else None
        if local is not None and local.startswith(_ENCODER_TOP):
            encoder[local] = value
        elif local is not None and local.startswith(_HEAD_TOP):
            head[local] = value
        elif prefix == "backbone.net." and key.startswith("backbone.simfp_"):
            neck[key[len("backbone."):]] = value
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
    if prefix == "backbone.net.":
        fmt = "detectron2"
    elif prefix == "" and rest is None:
        fmt = "timm"
    elif prefix == "" and "config" not in rest:
        fmt = "mae"
    else:
        fmt = "maetransfer"
    return LoadedCheckpoint(encoder, decoder, head, fmt, source, neck=neck, other=other, meta=_meta_from(rest or {}))


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


def parse_state(obj, source: str = "state dict", hf_config: Optional[dict] = None) -> LoadedCheckpoint:
    """Split a loaded checkpoint object into a `LoadedCheckpoint` (official naming), detecting the format."""
    state, rest = _unwrap(obj, source)
    prefix = _find_prefix(state, "embeddings.patch_embeddings.projection.weight", source)
    if prefix is not None:
        return _parse_hf(state, prefix, hf_config or {}, source)
    prefix = _find_prefix(state, "patch_embed.projection.weight", source)
    if prefix is not None:
        return _parse_mmseg(state, prefix, source)
    prefix = _find_prefix(state, "patch_embed.proj.weight", source)
    if prefix is not None:
        return _parse_official(state, rest, prefix, source)
    raise CheckpointError(f"{source}: no ViT patch embedding found (looked for 'patch_embed.proj.weight', "
                          f"'patch_embed.projection.weight' and HF 'embeddings.patch_embeddings.projection.weight'); "
                          f"not a ViT checkpoint of a known format")


def read_checkpoint(path: Union[str, Path], unsafe: bool = False) -> LoadedCheckpoint:
    """Read any supported checkpoint file or HF folder into official naming."""
    obj, hf_config = read_raw(path, unsafe)
    ckpt = parse_state(obj, str(path), hf_config)
    if not ckpt.encoder:
        raise CheckpointError(f"{path}: no encoder weights found")
    return ckpt


def load_encoder_state(path: Union[str, Path], unsafe: bool = False) -> StateDict:
    """Official-naming encoder state dict from a checkpoint of any supported format (for `train.init_checkpoint`)."""
    return read_checkpoint(path, unsafe).encoder


# ---------------------------------------------------------------------------------------------------------------
# Architecture facts
# ---------------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------
def to_mae(ckpt: LoadedCheckpoint) -> dict:
    return {"model": {**ckpt.encoder, **ckpt.decoder, **ckpt.head}}


def to_timm(ckpt: LoadedCheckpoint) -> StateDict:
    # No decoder: timm's checkpoint filter takes a top-level 'mask_token' for a DINOv2 file.
    return {**ckpt.encoder, **ckpt.head}


def to_detectron2(ckpt: LoadedCheckpoint) -> dict:
    """ViTDet layout: the encoder under `backbone.net.` without cls_token and final norm (ViTDet has neither; it
    keeps pos_embed with its cls row and drops the row at every forward), pyramid under `backbone.`."""
    model = {f"backbone.net.{k}": v for k, v in ckpt.encoder.items()
             if k != "cls_token" and not k.startswith("norm.")}
    model.update({f"backbone.{k}": v for k, v in ckpt.neck.items() if k.startswith("simfp_")})
    return {"model": model}


def _mmseg_key(key: str) -> str:
    m = re.match(r"blocks\.(\d+)\.(.+)$", key)
    if m:
        idx, rest = m.groups()
        if rest in _MMSEG_LAYER:
            return f"layers.{idx}.{_MMSEG_LAYER[rest]}"
        module, leaf = _split_weight_bias(rest)
        return f"layers.{idx}.{_MMSEG_LAYER.get(module, module)}.{leaf}"
    if key.startswith("patch_embed.proj."):
        return "patch_embed.projection." + key[len("patch_embed.proj."):]
    return key


def to_mmseg(ckpt: LoadedCheckpoint) -> dict:
    """beit2mmseg layout (`backbone.` prefix, head and decoder dropped), pyramid weights under `neck.`."""
    state = {f"backbone.{_mmseg_key(k)}": v for k, v in ckpt.encoder.items()}
    state.update({f"neck.{k}": v for k, v in ckpt.neck.items() if not k.startswith("simfp_")})
    return {"state_dict": state}


def _hf_naming() -> int:
    """The installed transformers' in-memory ViTMAE naming: 4 (`encoder.layer.N...query`) or 5 (`layers.N...q_proj`)."""
    from transformers import ViTMAEConfig, ViTMAEModel
    cfg = ViTMAEConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                       image_size=4, patch_size=2)
    with torch.device("meta"):
        keys = set(ViTMAEModel(cfg).state_dict())
    if "layers.0.attention.q_proj.weight" in keys:
        return 5
    if "encoder.layer.0.attention.attention.query.weight" in keys:
        return 4
    raise CheckpointError(f"the installed transformers uses ViTMAE key names this converter does not know "
                          f"(e.g. {sorted(keys)[0]})")


def _to_hf_layers(state: StateDict, src_prefix: str, dst_prefix: str, version: int) -> StateDict:
    out = {}
    pattern = re.compile(re.escape(src_prefix) + r"(\d+)\.(.+)$")
    v = 0 if version == 4 else 1
    for key, value in state.items():
        idx, rest = pattern.match(key).groups()
        module, leaf = _split_weight_bias(rest)
        if module == "attn.qkv":
            for part, names in zip(value.chunk(3, dim=0), _HF_QKV):
                out[f"{dst_prefix}{idx}.{names[v]}.{leaf}"] = part
        elif module in _HF_LAYER:
            out[f"{dst_prefix}{idx}.{_HF_LAYER[module][v]}.{leaf}"] = value
        else:
            raise CheckpointError(f"'{key}' has no Hugging Face ViTMAE equivalent (HF ViTMAE has no relative "
                                  f"position or layer scale)")
    return out


def to_hf_state(ckpt: LoadedCheckpoint, version: int) -> StateDict:
    """ViTMAEForPreTraining state dict (`vit.` + `decoder.`) in transformers `version` naming."""
    state = {}
    blocks = {k: v for k, v in ckpt.encoder.items() if k.startswith("blocks.")}
    layers = "encoder.layer." if version == 4 else "layers."
    for key, value in ckpt.encoder.items():
        if key.startswith("blocks."):
            continue
        base, _, leaf = key.partition(".")
        if key in ("cls_token", "pos_embed"):
            state[f"vit.{_HF_TOP[key]}"] = value
        elif key.startswith("patch_embed.proj."):
            state["vit." + _HF_TOP["patch_embed.proj"] + key[len("patch_embed.proj"):]] = value
        elif base == "norm":
            state[f"vit.layernorm.{leaf}"] = value
        else:
            raise CheckpointError(f"'{key}' has no Hugging Face ViTMAE equivalent")
    state.update({f"vit.{k}": v for k, v in _to_hf_layers(blocks, "blocks.", layers, version).items()})
    dec_blocks = {k: v for k, v in ckpt.decoder.items() if k.startswith("decoder_blocks.")}
    for key, value in ckpt.decoder.items():
        if not key.startswith("decoder_blocks."):
            state[f"decoder.{key}"] = value
    state.update(_to_hf_layers(dec_blocks, "decoder_blocks.", "decoder.decoder_layers.", version))
    return state


def hf_config(ckpt: LoadedCheckpoint, num_heads: Optional[int] = None, decoder_num_heads: Optional[int] = None):
    """transformers.ViTMAEConfig describing the checkpoint (MAE's LayerNorm eps 1e-6, sizes from the weights)."""
    from transformers import ViTMAEConfig
    arch = encoder_arch(ckpt.encoder, ckpt.source)
    if arch["grid"] is None or not arch["cls_row"]:
        raise CheckpointError(f"{ckpt.source}: HF ViTMAE needs a square pos_embed with a cls row")
    kwargs = dict(hidden_size=arch["embed_dim"], num_hidden_layers=arch["depth"],
                  num_attention_heads=num_heads_of(ckpt, arch, num_heads), intermediate_size=arch["mlp_hidden"],
                  hidden_act="gelu", layer_norm_eps=1e-6, image_size=arch["grid"][0] * arch["patch_size"],
                  patch_size=arch["patch_size"], num_channels=arch["in_chans"], qkv_bias=True,
                  norm_pix_loss=bool(ckpt.meta.get("norm_pix_loss", False)),
                  mask_ratio=float(ckpt.meta.get("mask_ratio", 0.75)))
    if ckpt.decoder:
        depth = 1 + max(int(k.split(".")[1]) for k in ckpt.decoder if k.startswith("decoder_blocks."))
        kwargs.update(decoder_hidden_size=ckpt.decoder["decoder_embed.weight"].shape[0],
                      decoder_num_hidden_layers=depth,
                      decoder_num_attention_heads=decoder_num_heads_of(ckpt, decoder_num_heads),
                      decoder_intermediate_size=ckpt.decoder["decoder_blocks.0.mlp.fc1.weight"].shape[0])
    config = ViTMAEConfig(**kwargs)
    config.architectures = ["ViTMAEForPreTraining" if ckpt.decoder else "ViTMAEModel"]
    return config


def save_hf(ckpt: LoadedCheckpoint, dst: Path, num_heads: Optional[int] = None,
            decoder_num_heads: Optional[int] = None) -> None:
    """A `save_pretrained` folder written by the installed transformers itself (its on-disk naming and config), so
    that `ViTMAEModel.from_pretrained(dst)` (and `ViTMAEForPreTraining` when there is a decoder) loads it."""
    try:
        import transformers
    except ImportError:
        raise CheckpointError("writing the Hugging Face format needs transformers (pip install transformers)") from None
    config = hf_config(ckpt, num_heads, decoder_num_heads)
    model_cls = transformers.ViTMAEForPreTraining if ckpt.decoder else transformers.ViTMAEModel
    with torch.device("meta"):  # no random init of a model that is overwritten anyway
        model = model_cls(config)
    state = to_hf_state(ckpt, _hf_naming())
    if not ckpt.decoder:
        state = {k[len("vit."):]: v for k, v in state.items()}
    expected = set(model.state_dict())
    if set(state) != expected:
        diff = sorted(set(state) ^ expected)
        raise CheckpointError(f"{ckpt.source}: the converted names do not match the installed transformers "
                              f"{transformers.__version__} ViTMAE (e.g. {diff[0]})")
    # Separate contiguous copies: q/k/v are views of one qkv tensor and safetensors refuses shared storage.
    model.load_state_dict({k: v.detach().contiguous().clone() for k, v in state.items()}, strict=True, assign=True)
    model.save_pretrained(str(dst))


def save_checkpoint(ckpt: LoadedCheckpoint, dst: Union[str, Path], fmt: str, num_heads: Optional[int] = None,
                    decoder_num_heads: Optional[int] = None) -> Path:
    """Write `ckpt` in format `fmt` (one of WRITE_FORMATS); 'hf' writes a save_pretrained folder."""
    dst = Path(dst)
    if fmt == "hf":
        save_hf(ckpt, dst, num_heads, decoder_num_heads)
        return dst
    writers = {"mae": to_mae, "timm": to_timm, "detectron2": to_detectron2, "mmseg": to_mmseg}
    if fmt not in writers:
        raise CheckpointError(f"unknown output format {fmt!r}: expected one of {', '.join(WRITE_FORMATS)}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(writers[fmt](ckpt), tmp)
    tmp.replace(dst)
    return dst


# ---------------------------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    loaded: List[str]
    missing: List[str]
    unexpected: List[str]
    notes: List[str]

    def summary(self, source: str, target: str) -> str:
        return "\n".join([f"loaded {len(self.loaded)} tensors from {source} into {target}"] +
                         [f"  {n}" for n in self.notes])


def _find_vit(model: nn.Module) -> VisionTransformer:
    if isinstance(model, VisionTransformer):
        return model
    found = [m for m in model.modules() if isinstance(m, VisionTransformer)]
    if len(found) != 1:
        raise CheckpointError(f"{type(model).__name__} holds {len(found)} VisionTransformers; pass the encoder itself")
    return found[0]


def _group(keys: List[str]) -> str:
    """'blocks.0.attn.rel_pos_h', 'blocks.1.attn.rel_pos_h' -> 'blocks.*.attn.rel_pos_h (x2)'."""
    counts = defaultdict(int)
    for k in keys:
        counts[re.sub(r"(blocks|layers)\.\d+\.", r"\1.*.", k)] += 1
    return ", ".join(f"{k} (x{n})" if n > 1 else k for k, n in sorted(counts.items()))


# Why a key can be absent from the checkpoint, or unused by the model, when nothing is wrong.
_NEW_IN_MODEL = [
    (r"\.attn\.(rel_pos_h|rel_pos_w|relative_position_bias_table)$", "relative-position tables (added at transfer, "
                                                                       "zero-initialised)"),
    (r"\.ls[12]\.gamma$", "layer scale (added at transfer, set to its init value)"),
    (r"^(fc_norm|head)\.", "classification head (freshly initialised)"),
    (r"^cls_token$", "cls_token (the source had no class token; freshly initialised)"),
    (r"^norm\.", "final norm (not in the source: fine-tuned and detectron2 files drop it; freshly initialised)"),
    (r"^(decoder_|mask_token$|encoder_mask_token$)", "MAE decoder (the source has none; random init)"),
]
_UNUSED_BY_MODEL = [
    (r"^cls_token$", "cls_token (this model has no class token, as a windowed detection backbone)"),
    (r"^norm\.", "final norm (this model does not use it: windowed backbone or global-average pooling)"),
    (r"^(fc_norm|head)\.", "the checkpoint's classification head (this model has no such head)"),
]
# Trained weights the model has no place for: loading would silently change the network.
_STRUCTURAL = [
    (r"\.ls[12]\.gamma$", "layer scale; build the model with layer_scale_init"),
    (r"\.attn\.(rel_pos_h|rel_pos_w)$", "decomposed relative positions; build the model with rel_pos='decomposed'"),
    (r"\.attn\.relative_position_bias_table$", "relative position bias; build the model with rel_pos='bias'"),
]


def _classify(keys: List[str], rules) -> Tuple[Dict[str, List[str]], List[str]]:
    groups, rest = defaultdict(list), []
    for k in keys:
        for pattern, why in rules:
            if re.search(pattern, k):
                groups[why].append(k)
                break
        else:
            rest.append(k)
    return groups, rest


def _adapt_pos_embed(pos: torch.Tensor, vit: VisionTransformer, notes: List[str], source: str) -> torch.Tensor:
    if pos.shape == vit.pos_embed.shape:
        return pos
    n = pos.shape[1]
    side = math.isqrt(n - 1)
    if side * side != n - 1:
        side = math.isqrt(n)
        if side * side != n:
            raise CheckpointError(f"{source}: pos_embed has {n} positions, not a square grid (with or without a cls "
                                  f"row)")
        pos = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)  # the layout always keeps a cls row
        notes.append("pos_embed: added a zero cls row (the source had none)")
    if (side, side) != tuple(vit.grid_size):
        pos = interpolate_pos_embed(pos, vit.grid_size, (side, side), num_prefix_tokens=1)
        notes.append(f"resized pos_embed {side}x{side} -> {vit.grid_size[0]}x{vit.grid_size[1]} "
                     f"(bicubic, align_corners=False, no antialias)")
    return pos


def _adapt_rel_pos_tables(state: StateDict, vit: VisionTransformer, target: StateDict, notes: List[str],
                          source: str) -> None:
    """Relative-position tables trained for another input or window size, resized to the model's: decomposed tables
    linearly (ViTDet's get_rel_pos), BEiT bias tables with timm's resize_rel_pos_bias_table (the BEiT/mmseg
    geometric-progression resampling used when their checkpoints are loaded; cls rows kept)."""
    resized = []
    for key in [k for k in state if k in target and state[k].shape != target[k].shape]:
        if state[key].shape[1:] != target[key].shape[1:]:
            continue  # another head count or head dim: reported as a shape mismatch
        if key.endswith((".attn.rel_pos_h", ".attn.rel_pos_w")):
            state[key] = resize_decomposed_table(state[key], target[key].shape[0])
        elif key.endswith(".attn.relative_position_bias_table"):
            window = tuple(vit.get_submodule(key.rsplit(".", 1)[0]).input_size)
            try:  # the source grid is taken as square, as in BEiT/mmseg/timm
                state[key] = resize_rel_pos_bias_table(state[key], window, tuple(target[key].shape))
            except (ValueError, AssertionError) as exc:
                raise CheckpointError(f"checkpoint {source}: cannot resize {key} {tuple(state[key].shape)} to "
                                      f"{tuple(target[key].shape)} ({exc})") from None
        else:
            continue
        resized.append(key)
    if resized:
        notes.append(f"resized {len(resized)} relative-position tables to this model's input/window size "
                     f"(e.g. {resized[0]} to {tuple(target[resized[0]].shape)})")


def load_into(model: nn.Module, state: Union[StateDict, LoadedCheckpoint], strict_report: bool = True,
              source: Optional[str] = None, verbose: bool = True) -> LoadReport:
    """Load an official-naming encoder (+ head) into our ViT (or the one VisionTransformer inside `model`).

    Interpolates pos_embed to the model's grid and resamples the patch-embedding kernel to its patch size; a head of
    another class count is skipped. Raises CheckpointError (one line) for a ViT of another size, a shape mismatch,
    or with strict_report for encoder weights missing from the checkpoint / trained weights the model cannot use.
    Prints one summary explaining the missing and unused keys that are normal for this target.
    """
    decoder_count = 0
    if isinstance(state, LoadedCheckpoint):
        source = source or f"{state.source} ({state.format})"
        decoder_count = len(state.decoder)
        state = {**state.encoder, **state.head}
    source = source or "state dict"
    vit = _find_vit(model)
    arch = encoder_arch(state, source)
    if (arch["embed_dim"], arch["depth"]) != (vit.embed_dim, vit.depth):
        raise CheckpointError(f"checkpoint {source} is a ViT with embed {arch['embed_dim']}/depth {arch['depth']} but "
                              f"the model is embed {vit.embed_dim}/depth {vit.depth}")
    target = vit.state_dict()
    state, notes = dict(state), []
    if "pos_embed" in state:
        state["pos_embed"] = _adapt_pos_embed(state["pos_embed"], vit, notes, source)
    _adapt_rel_pos_tables(state, vit, target, notes, source)
    kernel = tuple(target["patch_embed.proj.weight"].shape[-2:])
    if tuple(state["patch_embed.proj.weight"].shape[-2:]) != kernel:
        old = state["patch_embed.proj.weight"].shape[-1]
        state["patch_embed.proj.weight"] = resample_patch_embed(state["patch_embed.proj.weight"], list(kernel))
        notes.append(f"resampled patch_embed.proj.weight from patch {old} to {kernel[0]} (timm resample_patch_embed)")
    for key in [k for k in state if k.startswith(("head.", "fc_norm.")) and k in target]:
        if state[key].shape != target[key].shape:
            notes.append(f"skipped the checkpoint's {key} {tuple(state[key].shape)}: the model's is "
                         f"{tuple(target[key].shape)} (another class count; freshly initialised)")
            del state[key]
    for key in state:
        if key in target and state[key].shape != target[key].shape:
            raise CheckpointError(f"checkpoint {source}: {key} has shape {tuple(state[key].shape)} but the model "
                                  f"expects {tuple(target[key].shape)}")
    missing = sorted(k for k in target if k not in state)
    unexpected = sorted(k for k in state if k not in target)
    new_groups, unexplained_missing = _classify(missing, _NEW_IN_MODEL)
    structural, unexpected_rest = _classify(unexpected, _STRUCTURAL)
    unused_groups, unexplained_unused = _classify(unexpected_rest, _UNUSED_BY_MODEL)
    if strict_report and unexplained_missing:
        raise CheckpointError(f"checkpoint {source} lacks {len(unexplained_missing)} encoder tensors the model needs: "
                              f"{_group(unexplained_missing)}")
    if strict_report and structural:
        why, keys = next(iter(structural.items()))
        what, how = why.split("; ")
        raise CheckpointError(f"checkpoint {source} has trained {what} weights the model cannot use "
                              f"({_group(keys)}); {how}")
    vit.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)
    for why, keys in new_groups.items():
        notes.append(f"new in the model, normal here: {why}: {_group(keys)}")
    for why, keys in unused_groups.items():
        notes.append(f"unused from the checkpoint, normal here: {why}: {_group(keys)}")
    for why, keys in structural.items():
        what, how = why.split("; ")
        notes.append(f"UNUSED trained {what} weights, the network differs from the source: {_group(keys)} ({how})")
    if decoder_count:
        notes.append(f"ignored the MAE decoder ({decoder_count} tensors): pretraining only, not used for transfer")
    if unexplained_missing:
        notes.append(f"MISSING from the checkpoint (left at their init): {_group(unexplained_missing)}")
    if unexplained_unused:
        notes.append(f"UNEXPECTED in the checkpoint (ignored): {_group(unexplained_unused)}")
    report = LoadReport(sorted(k for k in state if k in target), missing, unexpected, notes)
    if verbose and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        print(report.summary(source, type(model).__name__), flush=True)
    return report
