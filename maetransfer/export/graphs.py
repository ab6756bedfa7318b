"""What an exported graph holds, per task, and the inputs it is traced with.

classifier  the ViT and its head: normalised images (B, 3, S, S) -> logits (B, K); B is dynamic.
segmentor   the UperNet on crops of the recipe's crop size: normalised crops (B, 3, h, w) -> logits (B, K, h, w) at
            the crop's size; B is dynamic. Resizing, the sliding window (or whole-image inference at the crop size),
            flips and the resize back stay outside, in `seg.inference`, shared with PyTorch.
detector    the ViTDet Mask R-CNN on the padded square: one normalised, zero-padded image (1, 3, S, S) and the size
            (h, w) it fills (int64) -> boxes (R, 4) at that scale, scores (R,), labels (R,) and 28 x 28 mask
            probabilities (R, 28, 28) of the R <= detections_per_img detections: ViT with windowed attention and
            relative positions, simple pyramid, RPN with its NMS, RoIAlign (aligned), box and mask heads. The resize,
            normalisation and padding, and the paste of the masks into the image, stay outside
            (`det.model.normalize_and_pad`, `det.model.postprocess_detection`), shared with PyTorch.

The graphs are traced (`torch.onnx.export(dynamo=False)`, or `torch.jit.trace` for TorchScript): the task code keeps
every count a tensor shape on its inference path, so the traced graph is the eager code for any number of boxes.
"""
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn


class ClassifierGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


class SegmentorGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model.encode_decode(crops)


class DetectorGraph(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, image_size: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        detection = self.model.inference(image, [(image_size[0], image_size[1])])[0]
        return detection["boxes"], detection["scores"], detection["labels"], detection["mask_probs"]


@dataclass(frozen=True)
class GraphSpec:
    wrapper: type
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    dynamic_batch: bool  # the first input's (and output's) dimension 0 is dynamic


GRAPHS: Dict[str, GraphSpec] = {
    "cls": GraphSpec(ClassifierGraph, ("images",), ("logits",), True),
    "seg": GraphSpec(SegmentorGraph, ("crops",), ("logits",), True),
    "det": GraphSpec(DetectorGraph, ("image", "image_size"), ("boxes", "scores", "labels", "mask_probs"), False),
}


def dynamic_axes(spec: GraphSpec) -> Dict[str, Dict[int, str]]:
    """torch.onnx's dynamic axes: the batch where the graph takes one, and the detection count of every output."""
    if spec.dynamic_batch:
        return {spec.inputs[0]: {0: "batch"}, spec.outputs[0]: {0: "batch"}}
    return {name: {0: "detections"} for name in spec.outputs}


def example_inputs(task: str, size: Sequence[int]) -> Tuple[torch.Tensor, ...]:
    """Inputs to trace the graph of `task` with, at its input `size` (h, w). Two images where the batch is
    dynamic: a trace of one could fix the size-1 batch (timm traces its ONNX exports with two for that reason)."""
    h, w = int(size[0]), int(size[1])
    generator = torch.Generator().manual_seed(0)
    if task == "det":
        return torch.randn(1, 3, h, w, generator=generator), torch.tensor([h, w])
    return (torch.randn(2, 3, h, w, generator=generator),)
