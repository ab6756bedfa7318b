"""Loading an official-naming encoder into this project's ViT, resizing what differs, with one report."""
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import resample_patch_embed
from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

from ..models.pos_embed import interpolate_pos_embed
from ..models.vit import VisionTransformer, resize_decomposed_table
from ..sizes import VIT_SIZES
from .arch import encoder_arch
from .core import CheckpointError, LoadedCheckpoint, StateDict, compare_state


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
    if (side, side) != tuple(vit.pos_grid):
        pos = interpolate_pos_embed(pos, vit.pos_grid, (side, side), num_prefix_tokens=1)
        notes.append(f"resized pos_embed {side}x{side} -> {vit.pos_grid[0]}x{vit.pos_grid[1]} "
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
        fits = [name for name, size in VIT_SIZES.items()
                if (size["embed_dim"], size["depth"]) == (arch["embed_dim"], arch["depth"])]
        fix = (f"model.arch={fits[0]}" if fits else
               f"model.embed_dim={arch['embed_dim']} model.depth={arch['depth']}") + " builds a model it fits"
        raise CheckpointError(f"checkpoint {source} is a ViT with embed {arch['embed_dim']}/depth {arch['depth']} but "
                              f"the model is embed {vit.embed_dim}/depth {vit.depth}: {fix}")
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
    diff = compare_state(state, target)
    if diff.reshaped:
        key = diff.reshaped[0]
        raise CheckpointError(f"checkpoint {source}: {key} has shape {tuple(state[key].shape)} but the model "
                              f"expects {tuple(target[key].shape)}")
    missing, unexpected = sorted(diff.missing), sorted(diff.unexpected)
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


# Tensors whose first dimension follows the number of object classes.
_CLASS_HEADS = ("roi_heads.box_predictor.", "roi_heads.mask_head.predictor.")
# Key prefixes of the torchvision-based detector of maetransfer 0.1, whose files this version cannot use.
_LEGACY_DETECTOR = ("rpn.head.", "backbone.pyramid.simfp_", "roi_heads.mask_predictor.")


def load_detector_into(model: nn.Module, state: StateDict, source: str, new_classes_ok: bool = False,
                       verbose: bool = True) -> LoadReport:
    """Load a whole detector (`maetransfer.det.MaskRCNN` naming = detectron2 ViTDet's) into `model`.

    The ViT `backbone.net` goes through `load_into` (pos_embed, relative-position tables and the patch kernel are
    resized if they were trained at other sizes, with a note); every other tensor must exist in the model with the
    same shape, and every tensor of the model must be in the file: anything else is a CheckpointError naming the key.
    `new_classes_ok` (fine-tuning on other classes): predictors of another class count are skipped and reported.
    """
    prefix = "backbone.net."
    legacy = [k for k in state if k.startswith(_LEGACY_DETECTOR)]
    if legacy:
        raise CheckpointError(f"{source}: a detector of maetransfer 0.1 (torchvision layout, e.g. '{legacy[0]}'); "
                              f"this version reads detectron2-layout detectors only: retrain it")
    target = {k: v for k, v in model.state_dict().items() if not k.startswith(prefix)}
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
    diff = compare_state(rest, target)
    if diff.unexpected or diff.missing:
        raise CheckpointError(f"{source}: does not match the configured detector ({len(diff.missing)} missing "
                              f"{diff.missing[:2]}, {len(diff.unexpected)} unexpected {diff.unexpected[:2]}); check "
                              f"model.* in the config")
    notes = []
    for key in diff.reshaped:
        if new_classes_ok and key.startswith(_CLASS_HEADS):
            notes.append(f"skipped {key} {tuple(rest[key].shape)}: the model's is {tuple(target[key].shape)} (another "
                         f"class count; freshly initialised)")
            del rest[key]
        else:
            raise CheckpointError(f"{source}: {key} has shape {tuple(rest[key].shape)} but the model expects "
                                  f"{tuple(target[key].shape)}; check model.* and the data's classes")
    vit = model.get_submodule(prefix[:-1])
    report = load_into(vit, {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, source=source,
                       verbose=False)
    model.load_state_dict(rest, strict=False)
    report = LoadReport([prefix + k for k in report.loaded] + sorted(rest), report.missing, report.unexpected,
                        report.notes + notes)
    if verbose and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
        print(report.summary(source, type(model).__name__), flush=True)
    return report
