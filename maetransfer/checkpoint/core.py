"""What every checkpoint module shares: the error, the state-dict type and the parsed checkpoint."""
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch

from ..errors import InputError

StateDict = Dict[str, torch.Tensor]


class CheckpointError(InputError, ValueError):
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


def _split_weight_bias(key: str) -> Tuple[str, str]:
    base, _, leaf = key.rpartition(".")
    return base, leaf


def name_list(keys: Sequence[str], limit: int = 3) -> str:
    """'a, b, c and 4 more': a few names of a long list, for one-line messages."""
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


@dataclass
class StateMismatch:
    """How a state dict from a file differs from a model's: names the model needs and the file lacks (`missing`),
    names the model lacks (`unexpected`), and names of both whose shapes differ (`reshaped`)."""
    missing: List[str]
    unexpected: List[str]
    reshaped: List[str]
    saved: StateDict
    expected: StateDict

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.reshaped)

    def __str__(self) -> str:
        """In a few words ('' when names and shapes agree)."""
        parts = [f"it lacks {name_list(self.missing)}"] if self.missing else []
        parts += [f"it has {name_list(self.unexpected)}, which this model lacks"] if self.unexpected else []
        if self.reshaped:
            key = self.reshaped[0]
            parts.append(f"{key} is {tuple(self.saved[key].shape)} in the file but {tuple(self.expected[key].shape)} "
                         f"in this model" + (f", and {len(self.reshaped) - 1} more tensors differ in shape"
                                             if len(self.reshaped) > 1 else ""))
        return "; ".join(parts)


def compare_state(saved: StateDict, expected: StateDict) -> StateMismatch:
    """The one comparison of a saved state dict with a model's (names and shapes) that every loader uses."""
    return StateMismatch([k for k in expected if k not in saved], [k for k in saved if k not in expected],
                         [k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)],
                         saved, expected)
