"""Semantic-segmentation metrics with mmseg `IoUMetric` semantics (mmseg/evaluation/metrics/iou_metric.py).

Per class, the intersection, union, predicted area and label area are summed over the whole data set (not averaged
per image); IoU = sum I / sum U and Acc = sum I / sum label area per class. A class absent from both the labels and
the predictions has 0/0 = NaN and is left out of the means (np.nanmean); a class only predicted has IoU 0 and counts.
aAcc = all correct pixels / all labelled pixels. Pixels labelled `ignore_index` are dropped before counting.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


def intersect_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                        ignore_index: int = 255) -> torch.Tensor:
    """(4, num_classes) float64 areas [intersection, union, prediction, label] of one prediction/label pair."""
    keep = label != ignore_index
    pred, label = pred[keep].long(), label[keep].long()
    if label.numel() and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(f"label values must lie in 0..{num_classes - 1} or be {ignore_index}; "
                         f"found {int(label.min())}..{int(label.max())}")
    # Predictions outside 0..num_classes-1 are not counted (as torch.histc with min=0, max=num_classes-1 drops them).
    valid = (pred >= 0) & (pred < num_classes)
    area_pred = torch.bincount(pred[valid], minlength=num_classes)
    area_label = torch.bincount(label, minlength=num_classes)
    area_inter = torch.bincount(label[pred == label], minlength=num_classes)
    area_union = area_pred + area_label - area_inter
    return torch.stack([area_inter, area_union, area_pred, area_label]).double()


def areas_to_metrics(areas: torch.Tensor) -> Dict[str, np.ndarray]:
    """Per-class IoU and Acc (NaN where undefined) and the scalar aAcc from summed areas."""
    inter, union, _, label = areas.double().cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"aAcc": inter.sum() / label.sum(), "IoU": inter / union, "Acc": inter / label}


class SegMetric:
    """Accumulates areas over a data set (`update`; the areas of several processes add up: `areas`) and summarises
    them (`compute`)."""

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None, ignore_index: int = 255,
                 device="cpu"):
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.ignore_index = ignore_index
        self.areas = torch.zeros(4, num_classes, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        self.areas += intersect_and_union(pred, label.to(pred.device), self.num_classes,
                                          self.ignore_index).to(self.areas.device)

    def compute(self) -> Dict:
        """{'mIoU', 'mAcc', 'aAcc'} in percent rounded to 2 decimals (as mmseg) and 'per_class' IoU/Acc (NaN -> None)."""
        m = areas_to_metrics(self.areas)
        with np.errstate(invalid="ignore"):
            summary = {"aAcc": _pct(m["aAcc"]), "mIoU": _pct(np.nanmean(m["IoU"])), "mAcc": _pct(np.nanmean(m["Acc"]))}
        per_class = [{"class": name, "IoU": _pct(i), "Acc": _pct(a)}
                     for name, i, a in zip(self.class_names, m["IoU"], m["Acc"])]
        return {**summary, "per_class": per_class}


def _pct(x) -> Optional[float]:
    x = float(x)
    return None if np.isnan(x) else round(x * 100, 2)


def format_table(per_class: List[Dict]) -> str:
    """Per-class IoU / Acc table as mmseg prints it (NaN for classes absent from labels and predictions)."""
    width = max([5] + [len(r["class"]) for r in per_class])
    fmt = lambda v: "nan" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"| {'Class':<{width}} |   IoU  |   Acc  |", f"|{'-' * (width + 2)}|--------|--------|"]
    lines += [f"| {r['class']:<{width}} | {fmt(r['IoU']):>6} | {fmt(r['Acc']):>6} |" for r in per_class]
    return "\n".join(lines)
