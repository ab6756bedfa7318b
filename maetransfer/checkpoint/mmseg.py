"""mmseg's beit2mmseg layout: `backbone.layers.N.*` encoder (BEiT q/v biases) and the Feature2Pyramid neck `neck.*`."""
import re
from collections import defaultdict

import torch

from .core import LoadedCheckpoint, StateDict, _split_weight_bias

# mmseg (beit2mmseg) per-layer names: official suffix -> mmseg suffix.
_MMSEG_LAYER = {"norm1": "ln1", "norm2": "ln2", "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1",
                "ls1.gamma": "gamma_1", "ls2.gamma": "gamma_2"}


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
