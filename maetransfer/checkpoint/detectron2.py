"""detectron2 ViTDet: the encoder under `backbone.net.` (official names, no cls_token, no final norm) and the simple
feature pyramid `backbone.simfp_*`; whole Mask R-CNN detectors. detectron2's .pkl files (pickled NumPy arrays) are
opened by `reader`."""
import dataclasses
import re

from .core import CheckpointError, LoadedCheckpoint, StateDict
from .mae import _parse_official

ENCODER_PREFIX = "backbone.net."


def _parse_detectron2(state: StateDict, rest: dict, source: str) -> LoadedCheckpoint:
    """The encoder as in an official file, under `backbone.net.`; the pyramid to `neck` in the names of
    `maetransfer.models.pyramid` (`simfp_*`)."""
    neck = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.simfp_")}
    state = {k: v for k, v in state.items() if not k.startswith("backbone.simfp_")}
    ckpt = _parse_official(state, rest, ENCODER_PREFIX, source)
    return dataclasses.replace(ckpt, format="detectron2", neck=neck)


def to_detectron2(ckpt: LoadedCheckpoint) -> dict:
    """ViTDet layout: the encoder under `backbone.net.` without cls_token and final norm (ViTDet has neither; it
    keeps pos_embed with its cls row and drops the row at every forward), pyramid under `backbone.`."""
    model = {f"backbone.net.{k}": v for k, v in ckpt.encoder.items()
             if k != "cls_token" and not k.startswith("norm.")}
    model.update({f"backbone.{k}": v for k, v in ckpt.neck.items() if k.startswith("simfp_")})
    return {"model": model}



# ---------------------------------------------------------------------------------------------------------------
# Whole detectors: detectron2 ViTDet Mask R-CNN (projects/ViTDet mask_rcnn_vitdet_{b,l,h}; model zoo .pkl or .pth)
# ---------------------------------------------------------------------------------------------------------------
# Every tensor of a ViTDet Mask R-CNN, by part. `maetransfer.det` builds its modules under these same names with the
# same conventions (classes in sorted category-id order, `cls_score` K + 1 rows with the background LAST, `bbox_pred`
# 4 rows per class and none for the background, one mask-predictor channel per class, RPN anchors per location in
# aspect-ratio order), so the two layouts map key for key and tensor for tensor; this table makes that explicit and
# turns any other key into an error that names it.
_NORMED = r"(weight|bias|norm\.(weight|bias|running_mean|running_var|num_batches_tracked))"
DETECTOR_PARTS = (
    ("ViT", r"backbone\.net\.(pos_embed|patch_embed\.proj\.(weight|bias)"
            r"|blocks\.\d+\.((norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)|attn\.rel_pos_[hw]))"),
    ("simple feature pyramid", rf"backbone\.simfp_\d+\.\d+\.{_NORMED}"),
    ("RPN", r"proposal_generator\.rpn_head\.(conv|conv\.conv\d+|objectness_logits|anchor_deltas)\.(weight|bias)"),
    ("box head", rf"roi_heads\.box_head\.(conv\d+\.{_NORMED}|fc\d+\.(weight|bias))"),
    ("box predictor", r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)"),
    ("mask head", rf"roi_heads\.mask_head\.(mask_fcn\d+\.{_NORMED}|(deconv|predictor)\.(weight|bias))"),
)
_DETECTOR_KEY = re.compile("|".join(f"(?:{pattern})" for _, pattern in DETECTOR_PARTS))
# Buffers some detectron2 files carry; the model takes normalisation from its config.
_IGNORED = ("pixel_mean", "pixel_std")


def is_detector(state: StateDict) -> bool:
    """A whole two-stage detector (RoI heads present), not an encoder file."""
    return any(k.startswith("roi_heads.") for k in state)


def detector_state(state: StateDict) -> StateDict:
    """A detector's tensors in the shared naming, without the buffers the model rebuilds."""
    return {k: v for k, v in state.items() if k not in _IGNORED}


def to_detectron2_detector(state: StateDict, source: str) -> dict:
    """A detector of this project as a detectron2 checkpoint (`{'model': state}`, loadable by DetectionCheckpointer
    and LazyConfig ViTDet models). Parts detectron2's ViTDet does not have (the MAE paper's multi-level pyramid + FPN,
    `model.pyramid=multilevel`) are an error naming the first such key."""
    foreign = [k for k in state if not _DETECTOR_KEY.fullmatch(k)]
    if foreign:
        hint = (" (the multi-level pyramid + FPN of model.pyramid=multilevel has no detectron2 ViTDet equivalent)"
                if foreign[0].startswith(("backbone.pyramid.", "backbone.fpn.")) else "")
        raise CheckpointError(f"{source}: '{foreign[0]}' (and {len(foreign) - 1} more) has no place in a detectron2 "
                              f"ViTDet Mask R-CNN{hint}")
    return {"model": dict(state)}
