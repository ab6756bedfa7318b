"""What every checkpoint module shares: the error, the state-dict type and the parsed checkpoint."""
from dataclasses import dataclass, field
from typing import Dict, Tuple

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
