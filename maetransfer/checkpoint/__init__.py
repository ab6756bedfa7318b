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

Modules: `reader` (safe file reading), one per format with its parser and writer (`mae` = official/timm/ours, `hf`,
`detectron2`, `mmseg`), `arch` (sizes and head counts from the weights), `adapter` (`load_into` a model); this
package detects the format, dispatches, and re-exports the public names.
"""
from pathlib import Path
from typing import Optional, Tuple, Union


from ..files import save_torch
from .adapter import LoadReport, load_detector_into, load_into
from .arch import decoder_num_heads_of, encoder_arch, num_heads_of
from .core import CheckpointError, LoadedCheckpoint, StateDict, StateMismatch, compare_state
from .detectron2 import ENCODER_PREFIX as _DETECTRON2_PREFIX
from .detectron2 import _parse_detectron2, detector_state, is_detector, to_detectron2, to_detectron2_detector
from .hf import _parse_hf, hf_config, save_hf, to_hf_state
from .mae import _parse_official, to_mae, to_timm
from .mmseg import _parse_mmseg, to_mmseg
from .reader import read_raw, unwrap_state

__all__ = ["WRITE_FORMATS", "CheckpointError", "LoadReport", "LoadedCheckpoint", "StateDict", "StateMismatch",
           "compare_state", "convert_checkpoint", "decoder_num_heads_of", "detector_state", "encoder_arch", "hf_config",
           "is_detector", "load_detector_into", "load_encoder_state", "load_into", "num_heads_of", "parse_state",
           "read_checkpoint", "read_raw", "read_state", "save_detectron2_detector", "save_hf", "to_detectron2", "to_detectron2_detector", "to_hf_state", "to_mae", "to_mmseg", "to_timm",
           "unwrap_state"]

WRITE_FORMATS = ("mae", "hf", "timm", "detectron2", "mmseg")

def _find_prefix(state: StateDict, suffix: str, source: str) -> Optional[str]:
    prefixes = sorted({k[: -len(suffix)] for k in state if k == suffix or k.endswith("." + suffix)})
    if len(prefixes) > 1:
        raise CheckpointError(f"{source}: several encoders in one file (prefixes {', '.join(map(repr, prefixes))})")
    return prefixes[0] if prefixes else None


def parse_state(obj, source: str = "state dict", hf_config: Optional[dict] = None) -> LoadedCheckpoint:
    """Split a loaded checkpoint object into a `LoadedCheckpoint` (official naming), detecting the format."""
    state, rest = unwrap_state(obj, source)
    prefix = _find_prefix(state, "embeddings.patch_embeddings.projection.weight", source)
    if prefix is not None:
        return _parse_hf(state, prefix, hf_config or {}, source)
    prefix = _find_prefix(state, "patch_embed.projection.weight", source)
    if prefix is not None:
        return _parse_mmseg(state, prefix, source)
    prefix = _find_prefix(state, "patch_embed.proj.weight", source)
    if prefix == _DETECTRON2_PREFIX:
        return _parse_detectron2(state, rest, source)
    if prefix is not None:
        return _parse_official(state, rest, prefix, source)
    raise CheckpointError(f"{source}: no ViT patch embedding found (looked for 'patch_embed.proj.weight', "
                          f"'patch_embed.projection.weight' and HF 'embeddings.patch_embeddings.projection.weight'); "
                          f"not a ViT checkpoint of a known format")


def read_state(path: Union[str, Path], unsafe: bool = False) -> Tuple[StateDict, Optional[dict]]:
    """A file's state dict as stored (no renaming; NumPy arrays as tensors) and its other top-level entries."""
    obj, _ = read_raw(path, unsafe)
    return unwrap_state(obj, str(path))


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


def convert_checkpoint(ckpt: LoadedCheckpoint, dst: Union[str, Path], fmt: str, num_heads: Optional[int] = None,
                       decoder_num_heads: Optional[int] = None) -> Path:
    """Write `ckpt` converted to format `fmt` (one of WRITE_FORMATS); 'hf' writes a save_pretrained folder. (Not a
    training checkpoint: those are the engine's `Checkpointer`.)"""
    dst = Path(dst)
    if fmt == "hf":
        save_hf(ckpt, dst, num_heads, decoder_num_heads)
        return dst
    writers = {"mae": to_mae, "timm": to_timm, "detectron2": to_detectron2, "mmseg": to_mmseg}
    if fmt not in writers:
        raise CheckpointError(f"unknown output format {fmt!r}: expected one of {', '.join(WRITE_FORMATS)}")
    return save_torch(writers[fmt](ckpt), dst)


def save_detectron2_detector(state: StateDict, dst: Union[str, Path], source: str) -> Path:
    """Write a whole detector (`maetransfer.det` or detectron2 naming) as a detectron2 ViTDet checkpoint."""
    return save_torch(to_detectron2_detector(detector_state(state), source), Path(dst))


