"""The self-check of an export: the PyTorch predictor and the exported file's predictor (the same pre- and
post-processing: `logits`, `scores`, `detect` of maetransfer.predict) on the same images, compared as a user would
compare their results.

Tolerances (fp32 on both sides; the differences are float rounding of other kernels):
  classification  logits within 1e-3 x max(1, largest |logit|), and the same top-1 class for every image;
  segmentation    label maps equal on at least 99.9 % of the pixels;
  detection       every detection matched: same class, box IoU >= 0.99, score within 1e-3 (as COCO evaluation sees
                  them: the detector's own score threshold, boxes and masks at the image's size).
Each check returns its figures, `passed`, and a one-line `summary` naming the largest difference.
"""
from typing import Callable, Dict, List

import torch
from torchvision.ops import box_iou

LOGIT_RTOL = 1e-3
PIXEL_AGREEMENT = 0.999
BOX_IOU = 0.99
SCORE_ATOL = 1e-3


def check_classifier(reference, exported, images: List[torch.Tensor]) -> Dict:
    ref, out = reference.logits(images), exported.logits(images)
    diff = float((ref - out).abs().max())
    largest = float(ref.abs().max())
    same_top1 = int((ref.argmax(1) == out.argmax(1)).sum())
    tolerance = LOGIT_RTOL * max(1.0, largest)
    passed = diff <= tolerance and same_top1 == len(images)
    return {"passed": passed, "max_logit_diff": diff, "max_abs_logit": largest, "tolerance": tolerance,
            "top1_equal": f"{same_top1}/{len(images)}",
            "summary": f"largest logit difference {diff:.3g} (tolerance {tolerance:.3g}), top-1 equal on "
                       f"{same_top1} of {len(images)} images"}


def check_segmentor(reference, exported, images: List[torch.Tensor]) -> Dict:
    equal = total = 0
    diff = 0.0
    for image in images:
        ref, out = reference.scores(image), exported.scores(image)
        diff = max(diff, float((ref - out).abs().max()))
        equal += int((ref.argmax(0) == out.argmax(0)).sum())
        total += ref.shape[-2] * ref.shape[-1]
    agreement = equal / total
    return {"passed": agreement >= PIXEL_AGREEMENT, "pixels_equal": agreement, "pixels": total,
            "max_score_diff": diff,
            "summary": f"label maps equal on {100 * agreement:.3f} % of {total} pixels (needed "
                       f"{100 * PIXEL_AGREEMENT:.1f} %), largest score difference {diff:.3g}"}


def match_detections(reference: Dict[str, torch.Tensor], exported: Dict[str, torch.Tensor],
                     iou_threshold: float = BOX_IOU, score_atol: float = SCORE_ATOL) -> Dict:
    """Pairs each reference detection, best score first, with the unpaired exported detection of the same class of
    highest box IoU, if that IoU reaches `iou_threshold` and the scores differ by at most `score_atol`. Returns the
    count matched, the largest box-corner and score differences and the smallest mask IoU over the pairs."""
    iou = box_iou(reference["boxes"].float(), exported["boxes"].float())
    same_class = reference["labels"][:, None] == exported["labels"][None, :]
    close = (reference["scores"][:, None] - exported["scores"][None, :]).abs() <= score_atol
    iou = torch.where(same_class & close, iou, torch.full_like(iou, -1.0))
    taken = torch.zeros(len(exported["boxes"]), dtype=torch.bool)
    pairs = []
    for i in reference["scores"].argsort(descending=True).tolist():
        candidates = iou[i].masked_fill(taken, -1.0)
        if len(candidates) and float(candidates.max()) >= iou_threshold:
            j = int(candidates.argmax())
            taken[j] = True
            pairs.append((i, j))
    found = {"matched": len(pairs), "max_box_diff": 0.0, "max_score_diff": 0.0, "min_mask_iou": 1.0}
    if pairs:
        i, j = torch.tensor(pairs).T
        found["max_box_diff"] = float((reference["boxes"][i] - exported["boxes"][j]).abs().max())
        found["max_score_diff"] = float((reference["scores"][i] - exported["scores"][j]).abs().max())
        if "masks" in reference:
            a, b = reference["masks"][i].flatten(1), exported["masks"][j].flatten(1)
            union = (a | b).sum(1)
            ious = ((a & b).sum(1) / union.clamp(min=1)).masked_fill(union == 0, 1.0)  # two empty masks agree
            found["min_mask_iou"] = float(ious.min())
    return found


def check_detector(reference, exported, images: List[torch.Tensor]) -> Dict:
    counts = {"reference": 0, "exported": 0, "matched": 0}
    box_diff = score_diff = 0.0
    mask_iou = 1.0
    for ref, out in zip(reference.detect(images), exported.detect(images)):
        found = match_detections(ref, out)
        counts["reference"] += len(ref["boxes"])
        counts["exported"] += len(out["boxes"])
        counts["matched"] += found["matched"]
        box_diff, score_diff = max(box_diff, found["max_box_diff"]), max(score_diff, found["max_score_diff"])
        mask_iou = min(mask_iou, found["min_mask_iou"])
    passed = counts["matched"] == counts["reference"] == counts["exported"]
    return {"passed": passed, "detections": counts["reference"], "detections_exported": counts["exported"],
            "matched": counts["matched"], "max_box_diff": box_diff, "max_score_diff": score_diff,
            "min_mask_iou": mask_iou,
            "summary": f"{counts['matched']} of {counts['reference']} detections matched ({counts['exported']} "
                       f"exported; same class, box IoU >= {BOX_IOU}, score within {SCORE_ATOL}), largest box "
                       f"difference {box_diff:.3g} px, score difference {score_diff:.3g}, smallest mask IoU "
                       f"{mask_iou:.4f}"}


CHECKS: Dict[str, Callable] = {"cls": check_classifier, "seg": check_segmentor, "det": check_detector}
