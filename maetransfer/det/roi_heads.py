"""Box and mask heads of Mask R-CNN with detectron2's semantics (modeling/roi_heads/roi_heads.py, fast_rcnn.py,
box_head.py, mask_head.py, modeling/poolers.py), on torchvision's RoIAlign, NMS and box coder.

Written here rather than taken from torchvision's RoIHeads, whose semantics differ from ViTDet's: RoIAlign with
aligned=False (half a feature pixel off), background at class 0 with a regression row of its own, smooth-L1 box loss
(beta 1/9), small-box removal at test time and bitmask mask targets. Module and parameter names equal detectron2's
(`box_head.conv1..`, `box_head.fc1`, `box_predictor.cls_score` with the background LAST, `bbox_pred` 4 rows per
class, `mask_head.mask_fcn1..`, `.deconv`, `.predictor` one channel per class) so ViTDet detectors load by name.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms, roi_align

from ..models.pyramid import ConvNorm
from .masks import mask_targets
from .boxes import Box2BoxTransform, Matcher, clip_boxes
from .sampling import match, subsample_labels


def _roi_align_fp32(x: torch.Tensor, rois: torch.Tensor, size, scale: float) -> torch.Tensor:
    """ROIAlignV2 computed in fp32 and returned in the features' dtype. detectron2 casts the boxes to the features'
    dtype, harmless in its fp32/fp16 runs but, with bf16 features (train.amp=bf16), a rounding of box coordinates by
    up to 4 px at 1024; in fp32 this is exactly roi_align."""
    return roi_align(x.float(), rois.float(), size, scale, 0, True).to(x.dtype)


class ROIPooler(nn.Module):
    """detectron2 `ROIPooler` with ROIAlignV2 (`roi_align(aligned=True)`, adaptive sampling): box of side
    sqrt(area) goes to level floor(4 + log2(side / 224 + 1e-8)), clamped to the pooled levels."""

    def __init__(self, output_size: int, strides: Sequence[int], canonical_box_size: int = 224,
                 canonical_level: int = 4):
        super().__init__()
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.min_level, self.max_level = int(math.log2(strides[0])), int(math.log2(strides[-1]))
        self.canonical_box_size, self.canonical_level = canonical_box_size, canonical_level

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        sides = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        level = torch.floor(self.canonical_level + torch.log2(sides / self.canonical_box_size + 1e-8))
        return torch.clamp(level, min=self.min_level, max=self.max_level).to(torch.int64) - self.min_level

    def forward(self, features: List[torch.Tensor], boxes: List[torch.Tensor]) -> torch.Tensor:
        """Pooled (sum R_i, C, S, S) features of the boxes of every image, in order."""
        # Box counts are read from shapes inside tensor ops, never as Python numbers, so that an exported graph
        # (traced) keeps them dynamic.
        all_boxes = torch.cat(boxes)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        size = (self.output_size, self.output_size)
        if len(features) == 1:
            return _roi_align_fp32(features[0], rois, size, self.scales[0])
        levels = self.levels(all_boxes)
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], *size))
        for level, (x, scale) in enumerate(zip(features, self.scales)):
            inds = torch.nonzero(levels == level, as_tuple=True)[0]
            out.index_put_((inds,), _roi_align_fp32(x, rois[inds], size, scale))
        return out


def _split(x: torch.Tensor, parts: List[torch.Tensor]) -> List[torch.Tensor]:
    """`x` split into the lengths of `parts` (one per image); a single image's rows are `x` itself, with no length
    read as a Python number."""
    return [x] if len(parts) == 1 else list(x.split([len(p) for p in parts]))


def _msra_fill(module: nn.Module) -> None:
    """detectron2 c2_msra_fill: He-normal weights (fan_out, ReLU), zero bias."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


class BoxHead(nn.Sequential):
    """detectron2 `FastRCNNConvFCHead`: conv1..convN (3x3, norm, ReLU; He init), flatten, fc1..fcM (+ ReLU;
    c2_xavier init)."""

    def __init__(self, channels: int, pool_size: int, conv_dims: Sequence[int], fc_dims: Sequence[int], norm: str):
        layers = OrderedDict()
        for k, dim in enumerate(conv_dims):
            layers[f"conv{k + 1}"] = ConvNorm(channels, dim, 3, norm, activation=nn.ReLU(), padding=1)
            _msra_fill(layers[f"conv{k + 1}"])
            channels = dim
        size = channels * pool_size * pool_size
        for k, dim in enumerate(fc_dims):
            if k == 0:
                layers["flatten"] = nn.Flatten()
            layers[f"fc{k + 1}"] = nn.Linear(size, dim)
            nn.init.kaiming_uniform_(layers[f"fc{k + 1}"].weight, a=1)
            nn.init.constant_(layers[f"fc{k + 1}"].bias, 0)
            layers[f"fc_relu{k + 1}"] = nn.ReLU()
            size = dim
        super().__init__(layers)
        self.out_features = size


class BoxPredictor(nn.Module):
    """detectron2 `FastRCNNOutputLayers`: `cls_score` (K + 1 logits, background last, N(0, .01)) and class-specific
    `bbox_pred` (4 K deltas, N(0, .001))."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Sequential):
    """detectron2 `MaskRCNNConvUpsampleHead`: mask_fcn1..N (3x3, norm, ReLU), `deconv` (2x2 stride 2) + ReLU, 1x1
    `predictor` to one logit map per class (N(0, .001))."""

    def __init__(self, channels: int, num_convs: int, dim: int, num_classes: int, norm: str):
        layers = OrderedDict()
        for k in range(num_convs):
            layers[f"mask_fcn{k + 1}"] = ConvNorm(channels, dim, 3, norm, activation=nn.ReLU(), padding=1)
            channels = dim
        layers["deconv"] = nn.ConvTranspose2d(channels, dim, 2, stride=2)
        layers["deconv_relu"] = nn.ReLU()
        layers["predictor"] = nn.Conv2d(dim, num_classes, 1)
        super().__init__(layers)
        for name, layer in self.named_children():
            if name.startswith("mask_fcn") or name == "deconv":
                _msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)


def classification_stats(logits: torch.Tensor, classes: torch.Tensor) -> Dict[str, float]:
    """detectron2's `fast_rcnn/*` training diagnostics of the sampled regions (background = the last class):
    accuracy over all, accuracy over the foreground and the share of foreground called background (the last two only
    when there is foreground)."""
    if classes.numel() == 0:
        return {}
    background = logits.shape[1] - 1
    predicted = logits.argmax(dim=1)
    fg = (classes >= 0) & (classes < background)
    num_fg = int(fg.sum())
    stats = {"fast_rcnn/cls_accuracy": (predicted == classes).sum().item() / classes.numel()}
    if num_fg:
        stats["fast_rcnn/fg_cls_accuracy"] = (predicted[fg] == classes[fg]).sum().item() / num_fg
        stats["fast_rcnn/false_negative"] = (predicted[fg] == background).sum().item() / num_fg
    return stats


def mask_stats(logits: torch.Tensor, gt: torch.Tensor) -> Dict[str, float]:
    """detectron2's `mask_rcnn/*` diagnostics: pixel accuracy of the masks at logit 0, and the shares of background
    pixels predicted as mask and of mask pixels missed."""
    wrong = (logits > 0) != gt
    positive = int(gt.sum())
    return {"mask_rcnn/accuracy": 1 - wrong.sum().item() / max(wrong.numel(), 1),
            "mask_rcnn/false_positive": (wrong & ~gt).sum().item() / max(gt.numel() - positive, 1),
            "mask_rcnn/false_negative": (wrong & gt).sum().item() / max(positive, 1)}


class ROIHeads(nn.Module):
    """detectron2 `StandardROIHeads` with a box and a mask branch.

    Training: the ground-truth boxes join the proposals; proposals matched at IoU 0.5 (no low-quality matches),
    `batch_size_per_image` sampled per image with at most `positive_fraction` foreground; classification CE (mean)
    and class-specific box regression (weights 10, 10, 5, 5; smooth-L1 with `smooth_l1_beta`, 0 = L1 as ViTDet)
    summed over foreground and divided by the sampled count; the mask branch on foreground proposals with 28x28
    targets built as detectron2 builds them (BCE, mean). Test: softmax scores, decoded and clipped boxes, every
    (box, class) above `score_thresh`, NMS per class, the best `detections_per_img`; then masks for those boxes.
    """

    def __init__(self, *, num_classes: int, channels: int, strides: Sequence[int], box_pool_size: int = 7,
                 mask_pool_size: int = 14, conv_dim: int = 256, box_head_convs: int = 4, box_fc_dim: int = 1024,
                 mask_head_convs: int = 4, norm: str = "LN", batch_size_per_image: int = 512,
                 positive_fraction: float = 0.25, iou_threshold: float = 0.5, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, smooth_l1_beta: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.box_pooler = ROIPooler(box_pool_size, strides)
        self.box_head = BoxHead(channels, box_pool_size, [conv_dim] * box_head_convs, [box_fc_dim], norm)
        self.box_predictor = BoxPredictor(self.box_head.out_features, num_classes)
        self.mask_pooler = ROIPooler(mask_pool_size, strides)
        self.mask_head = MaskHead(channels, mask_head_convs, conv_dim, num_classes, norm)
        self.matcher = Matcher(iou_threshold, iou_threshold)
        self.box_transform = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.smooth_l1_beta = smooth_l1_beta

    def forward(self, features: List[torch.Tensor], proposals: List[torch.Tensor],
                image_sizes: List[Tuple[int, int]], targets: Optional[List[Dict]] = None):
        """Training: the loss dict. Test: per image a dict of boxes (R, 4), scores, labels (0..K-1) and
        mask_probs (R, M, M), at the size the network saw."""
        if self.training:
            return self.losses(features, proposals, targets)
        # One path whatever the counts (the mask head runs on zero boxes too), and no split for a single image: the
        # exported graph is this code traced on one image, and tracing fixes Python branches and numbers.
        scores, deltas = self.box_predictor(self.box_head(self.box_pooler(features, proposals)))
        boxes = _split(self.box_transform.apply_deltas(deltas.float(), torch.cat(proposals)), proposals)
        probs = _split(F.softmax(scores, dim=-1), proposals)
        detections = [self.detect(b, p, size) for b, p, size in zip(boxes, probs, image_sizes)]
        logits = self.mask_head(self.mask_pooler(features, [d["boxes"] for d in detections]))
        labels = torch.cat([d["labels"] for d in detections])
        index = labels.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[2:])
        mask_probs = logits.gather(1, index)[:, 0].sigmoid()  # the mask of each detection's class
        for d, m in zip(detections, _split(mask_probs, [d["boxes"] for d in detections])):
            d["mask_probs"] = m
        return detections

    def detect(self, boxes: torch.Tensor, probs: torch.Tensor, image_size: Tuple[int, int]) -> Dict:
        """detectron2 `fast_rcnn_inference_single_image`."""
        valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(probs).all(dim=1)
        boxes, probs = boxes[valid], probs[valid]  # no branch: see forward
        probs = probs[:, :-1]
        boxes = clip_boxes(boxes.reshape(-1, 4), image_size).view(-1, self.num_classes, 4)
        keep_mask = probs > self.score_thresh
        inds = keep_mask.nonzero()
        boxes, scores = boxes[keep_mask], probs[keep_mask]
        keep = batched_nms(boxes.float(), scores, inds[:, 1], self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": inds[keep, 1]}

    @torch.no_grad()
    def sample(self, proposals: List[torch.Tensor], targets: List[Dict]) -> List[Dict]:
        """detectron2 `label_and_sample_proposals` (with the ground truth appended to the proposals): per image the
        sampled boxes, their classes (background = K) and the index of their matched ground truth."""
        samples = []
        for boxes, target in zip(proposals, targets):
            gt_boxes, gt_classes = target["boxes"], target["labels"]
            boxes = torch.cat([boxes, gt_boxes])
            matched, labels = match(self.matcher, gt_boxes, boxes)
            if gt_classes.numel():
                classes = gt_classes[matched]
                classes[labels == 0] = self.num_classes
                classes[labels == -1] = -1
            else:
                classes = torch.full_like(matched, self.num_classes)
            fg, bg = subsample_labels(classes, self.batch_size_per_image, self.positive_fraction, self.num_classes)
            index = torch.cat([fg, bg])
            samples.append({"boxes": boxes[index], "classes": classes[index], "matched": matched[index]})
        return samples

    def losses(self, features: List[torch.Tensor], proposals: List[torch.Tensor],
               targets: List[Dict]) -> Dict[str, torch.Tensor]:
        samples = self.sample(proposals, targets)
        scores, deltas = self.box_predictor(self.box_head(self.box_pooler(features, [s["boxes"] for s in samples])))
        classes = torch.cat([s["classes"] for s in samples])
        boxes = torch.cat([s["boxes"] for s in samples])
        matched_gt = torch.cat([t["boxes"][s["matched"]] if len(t["boxes"]) else s["boxes"]
                                for s, t in zip(samples, targets)])
        loss_cls = F.cross_entropy(scores, classes) if classes.numel() else scores.sum() * 0
        fg = torch.nonzero((classes >= 0) & (classes < self.num_classes), as_tuple=True)[0]
        fg_deltas = deltas.view(-1, self.num_classes, 4)[fg, classes[fg]]
        target_deltas = self.box_transform.get_deltas(boxes[fg], matched_gt[fg])
        loss_box = F.smooth_l1_loss(fg_deltas, target_deltas, beta=self.smooth_l1_beta, reduction="sum")
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box / max(classes.numel(), 1)}
        losses["loss_mask"], mask_stats = self.mask_loss(features, samples, targets)
        num_fg = [int(((s["classes"] >= 0) & (s["classes"] < self.num_classes)).sum()) for s in samples]
        return {**losses, **classification_stats(scores.detach(), classes), **mask_stats,
                "roi_head/num_fg_samples": sum(num_fg) / len(samples),
                "roi_head/num_bg_samples": sum(len(s["classes"]) - n for s, n in zip(samples, num_fg)) / len(samples)}

    def mask_loss(self, features: List[torch.Tensor], samples: List[Dict],
                  targets: List[Dict]) -> Tuple[torch.Tensor, Dict[str, float]]:
        """detectron2 `mask_rcnn_loss` on the foreground samples: BCE of the ground-truth class's logits against the
        targets cropped (bitmasks) or rasterised (polygons) in each proposal box; and its diagnostics (none without
        foreground samples, as detectron2)."""
        fg_boxes, fg_classes, gt_masks = [], [], []
        for s, t in zip(samples, targets):
            fg = torch.nonzero((s["classes"] >= 0) & (s["classes"] < self.num_classes), as_tuple=True)[0]
            fg_boxes.append(s["boxes"][fg])
            fg_classes.append(s["classes"][fg])
            if len(fg):
                gt_masks.append(mask_targets(t["masks"], s["matched"][fg], s["boxes"][fg],
                                             self.mask_pooler.output_size * 2))
        logits = self.mask_head(self.mask_pooler(features, fg_boxes))
        if not gt_masks:
            return logits.sum() * 0, {}
        classes = torch.cat(fg_classes)
        logits = logits[torch.arange(len(classes), device=classes.device), classes]
        gt = torch.cat(gt_masks).bool()
        return F.binary_cross_entropy_with_logits(logits, gt.float(), reduction="mean"), mask_stats(logits.detach(), gt)
