"""Matching boxes to ground truth and sampling training regions, as detectron2 does (modeling/matcher.py,
modeling/sampling.py). torchvision's sampler returns masks, which loses the order detectron2 gives the sampled regions
(positives, then negatives, each in random order), so the sampler is written here."""
from typing import Tuple

import torch
from torchvision.ops import box_iou

from .boxes import Matcher


def match(matcher: Matcher, gt_boxes: torch.Tensor, boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """IoU matching of `boxes` (R, 4) to `gt_boxes` (M, 4): (matched gt index per box, label per box) with labels
    1 = foreground (IoU >= high, or a low-quality best match when the matcher allows them), 0 = background
    (IoU < low), -1 = ignored (in between). No ground truth: every box is background (index 0)."""
    if gt_boxes.numel() == 0:
        zeros = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
        return zeros, zeros
    return matcher(box_iou(gt_boxes, boxes))


def subsample_labels(labels: torch.Tensor, num_samples: int, positive_fraction: float,
                     bg_label: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """detectron2 `subsample_labels`: at most `num_samples * positive_fraction` random positives (labels neither -1
    nor `bg_label`) and random negatives (`bg_label`) up to `num_samples`; returns both index vectors."""
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    pos = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
    neg = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]
    return pos, neg
