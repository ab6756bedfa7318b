"""detectron2's box coding and matching (modeling/box_regression.py, modeling/matcher.py), written here because
torchvision has them only in a private module (`models.detection._utils`) whose interface may change without notice;
both are a few lines of arithmetic."""
import math
from typing import Sequence, Tuple

import torch
from torchvision.ops import clip_boxes_to_image

# detectron2's _DEFAULT_SCALE_CLAMP: exp(dw) never widens a box more than 1000/16 times.
SCALE_CLAMP = math.log(1000.0 / 16)


class Box2BoxTransform:
    """Boxes (x1, y1, x2, y2) <-> deltas (dx, dy, dw, dh) relative to reference boxes, scaled by `weights`: centre
    offsets in units of the reference's size, log size ratios clamped at `scale_clamp` when applied."""

    def __init__(self, weights: Sequence[float], scale_clamp: float = SCALE_CLAMP):
        self.weights, self.scale_clamp = tuple(float(w) for w in weights), scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """The deltas (N, 4) that turn each of `src_boxes` (N, 4) into its `target_boxes` row."""
        wx, wy, ww, wh = self.weights
        src_w, src_h = src_boxes[:, 2] - src_boxes[:, 0], src_boxes[:, 3] - src_boxes[:, 1]
        src_x, src_y = src_boxes[:, 0] + 0.5 * src_w, src_boxes[:, 1] + 0.5 * src_h
        tgt_w, tgt_h = target_boxes[:, 2] - target_boxes[:, 0], target_boxes[:, 3] - target_boxes[:, 1]
        tgt_x, tgt_y = target_boxes[:, 0] + 0.5 * tgt_w, target_boxes[:, 1] + 0.5 * tgt_h
        return torch.stack((wx * (tgt_x - src_x) / src_w, wy * (tgt_y - src_y) / src_h,
                            ww * torch.log(tgt_w / src_w), wh * torch.log(tgt_h / src_h)), dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """`deltas` (N, 4k) applied to `boxes` (N, 4): (N, 4k) boxes, in the deltas' dtype."""
        boxes = boxes.to(deltas.dtype)
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw = torch.clamp(deltas[:, 2::4] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[:, 3::4] / wh, max=self.scale_clamp)
        pred_x, pred_y = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
        pred_w, pred_h = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
        pred = torch.stack((pred_x - 0.5 * pred_w, pred_y - 0.5 * pred_h, pred_x + 0.5 * pred_w,
                            pred_y + 0.5 * pred_h), dim=2)
        return pred.reshape(deltas.shape)


class Matcher:
    """Each box takes the ground truth it overlaps most; its label is 1 (foreground) at IoU >= `high`, 0 (background)
    below `low` and -1 (ignored) in between. With `allow_low_quality_matches` every box that is some ground truth's
    best match (ties included) is foreground whatever its IoU, so that each object gets one (the RPN's rule)."""

    def __init__(self, low: float, high: float, allow_low_quality_matches: bool = False):
        if low > high:
            raise ValueError(f"Matcher thresholds low={low} > high={high}")
        self.low, self.high, self.allow_low_quality_matches = low, high, allow_low_quality_matches

    def __call__(self, quality: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """quality (M ground truths, N boxes), M and N > 0 -> (matched ground-truth index, label) per box."""
        best, matches = quality.max(dim=0)
        labels = torch.ones_like(matches)
        labels[best < self.high] = -1
        labels[best < self.low] = 0
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(dim=1).values
            _, boxes = torch.nonzero(quality == best_per_gt[:, None], as_tuple=True)
            labels[boxes] = 1
        return matches, labels


def clip_boxes(boxes: torch.Tensor, size) -> torch.Tensor:
    """torchvision's `clip_boxes_to_image` for boxes (..., 4) in an image of `size` (h, w): Python numbers, or 0-d
    tensors as in an exported detector, whose image size is an input of the graph (torchvision would turn tensor sizes
    into constants when traced). The same clamps either way."""
    h, w = size
    if not isinstance(h, torch.Tensor):
        return clip_boxes_to_image(boxes, (h, w))
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), w.to(boxes.dtype))
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), h.to(boxes.dtype))
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)
