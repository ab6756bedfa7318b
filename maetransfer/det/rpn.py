"""Region proposal network with detectron2's semantics (modeling/proposal_generator/rpn.py, anchor_generator.py,
proposal_utils.py), built on torchvision's box ops.

Written here rather than taken from torchvision.models.detection.rpn because its semantics differ from ViTDet's in
ways that change the numbers: torchvision rounds the cell anchors to whole pixels, drops boxes under 1e-3 px, uses
smooth-L1 (beta 1/9) and normalises the losses by the number of sampled anchors. Module names equal detectron2's
(`rpn_head.conv.conv0`, `.objectness_logits`, `.anchor_deltas`) so that ViTDet files load by name.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms

from ..models.pyramid import ConvNorm
from .boxes import Box2BoxTransform, Matcher, clip_boxes
from .sampling import match, subsample_labels


class AnchorGenerator(nn.Module):
    """detectron2 `DefaultAnchorGenerator`: per level, `sizes[i]` x `aspect_ratios` cell anchors centred at 0 and NOT
    rounded (w = sqrt(size^2 / a), h = a * w, computed in double then stored as float32), shifted to every feature
    location (offset 0: the first anchor is centred on pixel corner 0)."""

    def __init__(self, sizes: Sequence[float], aspect_ratios: Sequence[float], strides: Sequence[int]):
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.num_anchors = len(aspect_ratios)
        for level, size in enumerate(sizes):
            cells = []
            for ratio in aspect_ratios:
                w = math.sqrt(float(size) ** 2.0 / ratio)
                h = ratio * w
                cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
            # Not saved with the weights (detectron2's BufferList is non-persistent too): anchors follow the config.
            self.register_buffer(f"cell_anchors_{level}", torch.tensor(cells, dtype=torch.float32), persistent=False)

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """(H_i * W_i * A, 4) anchors per level, location-major (as the head's outputs are flattened)."""
        anchors = []
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            cells = getattr(self, f"cell_anchors_{level}")
            h, w = feature.shape[-2:]
            shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float32, device=cells.device)
            shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float32, device=cells.device)
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + cells.view(1, -1, 4)).reshape(-1, 4))
        return anchors


class RPNHead(nn.Module):
    """detectron2 `StandardRPNHead`: `num_convs` 3x3 convs + ReLU shared by all levels (`conv.conv0`, `conv.conv1`; a
    single conv is `conv`), then 1x1 convs to A objectness logits and A x 4 deltas; every layer N(0, 0.01), bias 0."""

    def __init__(self, channels: int, num_anchors: int, num_convs: int = 2):
        super().__init__()
        convs = [ConvNorm(channels, channels, 3, activation=nn.ReLU(), padding=1) for _ in range(num_convs)]
        self.conv = convs[0] if num_convs == 1 else nn.Sequential(
            OrderedDict((f"conv{k}", conv) for k, conv in enumerate(convs)))
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        hidden = [self.conv(x) for x in features]
        return [self.objectness_logits(t) for t in hidden], [self.anchor_deltas(t) for t in hidden]


class RPN(nn.Module):
    """detectron2 `RPN` for a pyramid: head on every level, anchors matched at IoU 0.3 / 0.7 (low-quality best
    matches kept), 256 anchors sampled per image (half positive at most), losses summed and divided by
    256 x images (objectness: BCE; boxes: smooth-L1 with `smooth_l1_beta`, 0 = L1 as ViTDet). Proposals: the top
    `pre_nms_topk` per level by logit, decoded (weights 1,1,1,1), clipped, empty boxes dropped, NMS 0.7 per level,
    the best `post_nms_topk` per image. Training and test take the first/second value of the topk pairs."""

    def __init__(self, *, channels: int, strides: Sequence[int], anchor_sizes: Sequence[float],
                 aspect_ratios: Sequence[float], num_convs: int = 2, pre_nms_topk: Tuple[int, int] = (2000, 1000),
                 post_nms_topk: Tuple[int, int] = (1000, 1000), nms_thresh: float = 0.7,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 iou_thresholds: Tuple[float, float] = (0.3, 0.7), smooth_l1_beta: float = 0.0,
                 min_box_size: float = 0.0):
        super().__init__()
        if len(anchor_sizes) != len(strides):
            raise ValueError(f"{len(anchor_sizes)} anchor sizes for {len(strides)} pyramid levels")
        self.anchor_generator = AnchorGenerator(anchor_sizes, aspect_ratios, strides)
        self.rpn_head = RPNHead(channels, len(aspect_ratios), num_convs)
        self.matcher = Matcher(iou_thresholds[0], iou_thresholds[1], allow_low_quality_matches=True)
        self.box_transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
        self.pre_nms_topk, self.post_nms_topk = tuple(pre_nms_topk), tuple(post_nms_topk)
        self.nms_thresh, self.min_box_size = nms_thresh, min_box_size
        self.batch_size_per_image, self.positive_fraction = batch_size_per_image, positive_fraction
        self.smooth_l1_beta = smooth_l1_beta

    def forward(self, features: List[torch.Tensor], image_sizes: List[Tuple[int, int]],
                gt_boxes: Optional[List[torch.Tensor]] = None) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
        """Proposals (R_i, 4) per image, best first, and the losses (training only; needs `gt_boxes`)."""
        anchors = self.anchor_generator(features)
        logits, deltas = self.rpn_head(features)
        n = features[0].shape[0]
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]  # (N, H*W*A)
        deltas = [x.view(n, -1, 4, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2) for x in deltas]
        losses = self.losses(anchors, logits, deltas, gt_boxes) if self.training else {}
        with torch.no_grad():
            proposals = [self.box_transform.apply_deltas(d.reshape(-1, 4).float(), a.repeat(n, 1)).view(n, -1, 4)
                         for a, d in zip(anchors, deltas)]
            return self.select_proposals(proposals, logits, image_sizes), losses

    def select_proposals(self, proposals: List[torch.Tensor], logits: List[torch.Tensor],
                         image_sizes: List[Tuple[int, int]]) -> List[torch.Tensor]:
        """detectron2 `find_top_rpn_proposals`."""
        topk = self.pre_nms_topk[0 if self.training else 1]
        boxes, scores, levels = [], [], []
        for level, (boxes_i, logits_i) in enumerate(zip(proposals, logits)):
            k = min(logits_i.shape[1], topk)
            top_scores, top_idx = logits_i.topk(k, dim=1)
            boxes.append(torch.gather(boxes_i, 1, top_idx[..., None].expand(-1, -1, 4)))
            scores.append(top_scores)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=top_idx.device))
        boxes, scores, levels = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(levels)
        results = []
        for boxes_i, scores_i, (h, w) in zip(boxes, scores, image_sizes):
            valid = torch.isfinite(boxes_i).all(dim=1) & torch.isfinite(scores_i)
            if self.training and not valid.all():
                raise FloatingPointError("RPN proposals or scores are not finite: training has diverged")
            # indexed whether or not all are finite: one graph for export (tracing would fix the branch taken)
            boxes_i, scores_i, lvl = boxes_i[valid], scores_i[valid], levels[valid]
            boxes_i = clip_boxes(boxes_i, (h, w))
            size = boxes_i[:, 2:] - boxes_i[:, :2]
            keep = (size > self.min_box_size).all(dim=1)
            boxes_i, scores_i, lvl = boxes_i[keep], scores_i[keep], lvl[keep]
            keep = batched_nms(boxes_i.float(), scores_i, lvl, self.nms_thresh)
            results.append(boxes_i[keep[: self.post_nms_topk[0 if self.training else 1]]])
        return results

    def losses(self, anchors: List[torch.Tensor], logits: List[torch.Tensor], deltas: List[torch.Tensor],
               gt_boxes: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        anchors = torch.cat(anchors)
        labels, target_deltas = [], []
        for gt in gt_boxes:
            matched, label = match(self.matcher, gt, anchors)
            pos, neg = subsample_labels(label, self.batch_size_per_image, self.positive_fraction, 0)
            label = torch.full_like(label, -1)
            label[pos], label[neg] = 1, 0
            labels.append(label)
            matched_boxes = gt[matched] if gt.numel() else torch.zeros_like(anchors)
            target_deltas.append(self.box_transform.get_deltas(anchors, matched_boxes))
        labels = torch.stack(labels)
        positive, valid = labels == 1, labels >= 0
        loss_loc = F.smooth_l1_loss(torch.cat(deltas, 1)[positive], torch.stack(target_deltas)[positive],
                                    beta=self.smooth_l1_beta, reduction="sum")
        loss_cls = F.binary_cross_entropy_with_logits(torch.cat(logits, 1)[valid], labels[valid].float(),
                                                      reduction="sum")
        normalizer = self.batch_size_per_image * len(gt_boxes)
        return {"loss_rpn_cls": loss_cls / normalizer, "loss_rpn_loc": loss_loc / normalizer,
                # detectron2's diagnostics: sampled anchors per image
                "rpn/num_pos_anchors": positive.sum().item() / len(gt_boxes),
                "rpn/num_neg_anchors": (labels == 0).sum().item() / len(gt_boxes)}
