"""Hugging Face ViTMAE, in the transformers 4 naming (`encoder.layer.N.attention.attention.query`) and the 5 naming
(`layers.N.attention.q_proj`): parsing into the official naming and writing `save_pretrained` folders."""
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from .arch import decoder_num_heads_of, encoder_arch, num_heads_of
from .core import CheckpointError, LoadedCheckpoint, StateDict, _split_weight_bias

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
    if "norm.weight" not in ckpt.encoder:
        what = ("a classifier fine-tuned with global pooling (fc_norm instead of the final norm)"
                if "fc_norm.weight" in ckpt.head else "an encoder without its final norm")
        raise CheckpointError(f"{ckpt.source}: {what}; HF ViTMAE needs the final norm.* weights: convert it --to mae "
                              "or --to timm instead")
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
