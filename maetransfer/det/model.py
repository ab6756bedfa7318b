"""Mask R-CNN with an MAE ViT backbone, with detectron2's ViTDet semantics end to end (detectron2 projects/ViTDet,
modeling/meta_arch/rcnn.py, postprocessing.py).

ViTDet (Li et al. 2022): plain ViT with windowed attention, a few global blocks and decomposed relative positions
-> SimpleFeaturePyramid (p2..p6, LN) -> RPN with 2 convs -> box head of 4 convs (LN) + 1 fc -> mask head of 4 convs
(LN). The MAE paper's Table 4 set-up instead takes 4 blocks at depth/4 steps through a multi-level pyramid and a
standard FPN, with BN. Inputs are normalised and zero-padded to a fixed square; the data pipeline resizes (LSJ for
training, `ResizeShortestEdge` for test, both on uint8 with PIL as detectron2) and the predictions are mapped back to
the size the caller asks for (boxes scaled and clipped, masks pasted at sub-pixel precision).

The state dict uses detectron2's ViTDet key names (`backbone.net.*`, `backbone.simfp_*`,
`proposal_generator.rpn_head.*`, `roi_heads.box_head.*`, `roi_heads.box_predictor.*`, `roi_heads.mask_head.*`), so
a detector moves between the two stacks without renaming.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torchvision.ops import FeaturePyramidNetwork, clip_boxes_to_image
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..models import MultiLevelPyramid, SimpleFeaturePyramid, VisionTransformer, build_norm, build_vit, vit_out_indices
from .masks import paste_masks_in_image
from .roi_heads import ROIHeads
from .rpn import RPN


class ViTDetBackbone(SimpleFeaturePyramid):
    """detectron2's `SimpleFeaturePyramid(net=ViT)`: the pyramid stages `simfp_*` on the last block of the ViT
    `.net`; returns {'p2'..'p5', 'p6'} (the last from a stride-2 max-pool), `out_channels` wide."""

    def __init__(self, net: VisionTransformer, *, out_channels: int = 256, scale_factors=(4.0, 2.0, 1.0, 0.5),
                 norm: str = "LN"):
        super().__init__(net.embed_dim, out_channels, scale_factors, norm, top_block=True, in_stride=net.patch_size)
        self.net = net

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return super().forward(self.net.forward_maps(images, [self.net.depth - 1])[0])


class MultiLevelBackbone(nn.Module):
    """MAE paper Table 4: blocks at depth/4 steps -> MultiLevelPyramid -> torchvision FPN + max-pool level."""

    def __init__(self, net: VisionTransformer, *, out_channels: int = 256, scale_factors=(4.0, 2.0, 1.0, 0.5),
                 pyramid_norm: str = "GN", fpn_norm: str = "BN"):
        super().__init__()
        self.net = net
        self.out_channels = out_channels
        self.out_indices = vit_out_indices(net.depth, len(scale_factors))
        self.pyramid = MultiLevelPyramid(net.embed_dim, norm=pyramid_norm, scale_factors=scale_factors,
                                         in_stride=net.patch_size)
        norm_layer = (lambda c: build_norm(fpn_norm, c)) if fpn_norm else None
        self.fpn = FeaturePyramidNetwork(self.pyramid.out_channels, out_channels, extra_blocks=LastLevelMaxPool(),
                                         norm_layer=norm_layer)
        strides = self.pyramid.strides + [self.pyramid.strides[-1] * 2]  # + the FPN's max-pool level
        self.strides = OrderedDict((f"p{s.bit_length() - 1}", s) for s in strides)

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        maps = self.pyramid(self.net.forward_maps(images, self.out_indices))
        outs = self.fpn(OrderedDict(zip(self.strides, maps)))
        return OrderedDict(zip(self.strides, outs.values()))  # FPN names its extra level 'pool'


class MaskRCNN(nn.Module):
    """detectron2 `GeneralizedRCNN` for Mask R-CNN.

    `forward(images, targets)` in training: `images` are (3, H, W) tensors of 0..255 values (uint8 or float) at
    most `pad_size` on each side; `targets` dicts with `boxes` (N, 4) xyxy, `labels` (N,) in 0..K-1 and `masks`
    (an (N, H, W) bitmask tensor, or a list of N polygon instances); returns the loss dict. In eval mode returns per
    image `boxes`, `scores`, `labels` and bool `masks` (N, H', W') at `output_sizes` (default: the input sizes).
    """

    def __init__(self, backbone: nn.Module, proposal_generator: RPN, roi_heads: ROIHeads, *,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float], pad_size: int, mask_threshold: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.pad_size = pad_size
        self.mask_threshold = mask_threshold

    def compile(self, *args, **kwargs) -> None:
        """`nn.Module.compile` of the backbone only (ViT + pyramid: one graph on the fixed padded square). The RPN
        and RoI heads have data-dependent shapes (nonzero, sampling, NMS: 34 graph breaks in the demo detector) and
        would recompile whenever the proposal counts change."""
        self.backbone.compile(*args, **kwargs)

    def preprocess(self, images: List[torch.Tensor]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        return normalize_and_pad(images, self.pixel_mean, self.pixel_std, self.pad_size)

    def forward(self, images: List[torch.Tensor], targets: Optional[List[Dict]] = None,
                output_sizes: Optional[List[Tuple[int, int]]] = None):
        batch, sizes = self.preprocess(images)
        if not self.training:
            detections = self.inference(batch, sizes)
            return [self.postprocess(d, size, out) for d, size, out in zip(detections, sizes, output_sizes or sizes)]
        features = list(self.backbone(batch).values())
        proposals, losses = self.proposal_generator(features, sizes, [t["boxes"] for t in targets])
        losses.update(self.roi_heads(features[:-1], proposals, sizes, targets))
        return losses

    def inference(self, batch: torch.Tensor, sizes: List[Tuple[int, int]]) -> List[Dict[str, torch.Tensor]]:
        """The network on a preprocessed batch whose images fill `sizes` (h, w) of the padded square: per image
        `boxes`, `scores`, `labels` and 28 x 28 `mask_probs` at the padded input's scale. This is what an exported
        detector holds (`maetransfer.export`); `postprocess` maps it to an image."""
        features = list(self.backbone(batch).values())
        proposals, _ = self.proposal_generator(features, sizes)
        # the extra max-pool level feeds only the RPN (detectron2 box_in_features)
        return self.roi_heads(features[:-1], proposals, sizes)

    def postprocess(self, detection: Dict, input_size: Tuple[int, int], output_size: Tuple[int, int]) -> Dict:
        return postprocess_detection(detection, input_size, output_size, self.mask_threshold)


def normalize_and_pad(images: List[torch.Tensor], pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                      pad_size: int) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
    """Normalise (mean / std of shape (3, 1, 1)), then zero-pad every image to the fixed `pad_size` square
    (detectron2 `square_pad`); returns the batch and the images' sizes."""
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    if max(max(s) for s in sizes) > pad_size:
        raise ValueError(f"image of size {max(sizes, key=max)} is larger than the {pad_size} px square the "
                         f"detector pads to: resize it first (test: ResizeShortestEdge, training: LSJ)")
    batch = pixel_mean.new_zeros((len(images), 3, pad_size, pad_size))
    for i, (img, (h, w)) in enumerate(zip(images, sizes)):
        batch[i, :, :h, :w] = (img.to(pixel_mean.device) - pixel_mean) / pixel_std
    return batch, sizes


def postprocess_detection(detection: Dict, input_size: Tuple[int, int], output_size: Tuple[int, int],
                          mask_threshold: float = 0.5) -> Dict:
    """detectron2 `detector_postprocess`: boxes scaled to `output_size` and clipped, empty boxes dropped, masks
    pasted into the output image and thresholded at `mask_threshold`."""
    out_h, out_w = int(output_size[0]), int(output_size[1])
    boxes = detection["boxes"].clone()
    boxes[:, 0::2] *= out_w / input_size[1]
    boxes[:, 1::2] *= out_h / input_size[0]
    boxes = clip_boxes_to_image(boxes, (out_h, out_w))
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    boxes = boxes[keep]
    return {"boxes": boxes, "scores": detection["scores"][keep], "labels": detection["labels"][keep],
            "masks": paste_masks_in_image(detection["mask_probs"][keep], boxes, (out_h, out_w), mask_threshold)}


def _size_overrides(model_cfg) -> Dict:
    """Architecture keys set in the config (null = the named size's value)."""
    return {k: model_cfg[k] for k in ("embed_dim", "depth", "num_heads", "patch_size") if model_cfg[k] is not None}


def build_backbone(model_cfg) -> nn.Module:
    m = model_cfg
    net = build_vit(m.arch, img_size=m.img_size, pretrain_img_size=m.pretrain_img_size, class_token=False,
                    window_size=m.window_size, global_blocks=list(m.global_blocks), rel_pos=m.rel_pos or None,
                    drop_path_rate=m.drop_path_rate, grad_checkpointing=m.grad_checkpointing, **_size_overrides(m))
    # Dense heads read block outputs; the final norm would be a parameter without gradient (and breaks DDP).
    net.norm = nn.Identity()
    if m.pyramid == "simple":
        return ViTDetBackbone(net, out_channels=m.out_channels, scale_factors=tuple(m.scale_factors),
                              norm=m.pyramid_norm)
    if m.pyramid == "multilevel":
        return MultiLevelBackbone(net, out_channels=m.out_channels, scale_factors=tuple(m.scale_factors),
                                  pyramid_norm=m.pyramid_norm, fpn_norm=m.fpn_norm)
    raise ValueError(f"unknown model.pyramid {m.pyramid!r}: expected 'simple' or 'multilevel'")


def build_mask_rcnn(cfg, num_classes: int) -> MaskRCNN:
    """Mask R-CNN for `num_classes` object categories from a detection config: its `model:` section, the input
    normalisation `data.mean`/`data.std` and `eval.mask_threshold`."""
    m = cfg.model
    backbone = build_backbone(m)
    strides = list(backbone.strides.values())  # one anchor size per level: config.check_rules
    rpn = RPN(channels=backbone.out_channels, strides=strides, anchor_sizes=list(m.anchor_sizes),
              aspect_ratios=list(m.aspect_ratios), num_convs=m.rpn_convs,
              pre_nms_topk=(m.rpn_pre_nms_top_n_train, m.rpn_pre_nms_top_n_test),
              post_nms_topk=(m.rpn_post_nms_top_n_train, m.rpn_post_nms_top_n_test),
              batch_size_per_image=m.rpn_batch_size_per_image, smooth_l1_beta=m.smooth_l1_beta)
    roi_heads = ROIHeads(num_classes=num_classes, channels=backbone.out_channels, strides=strides[:-1],
                         box_pool_size=m.box_pool_size, mask_pool_size=m.mask_pool_size, conv_dim=m.head_dim,
                         box_head_convs=m.box_head_convs, box_fc_dim=m.box_fc_dim, mask_head_convs=m.mask_head_convs,
                         norm=m.head_norm, batch_size_per_image=m.box_batch_size_per_image,
                         score_thresh=m.box_score_thresh, nms_thresh=m.box_nms_thresh,
                         detections_per_img=m.detections_per_img, smooth_l1_beta=m.smooth_l1_beta)
    return MaskRCNN(backbone, rpn, roi_heads, pixel_mean=cfg.data.mean, pixel_std=cfg.data.std, pad_size=m.img_size,
                    mask_threshold=float(cfg.eval.mask_threshold))


def detection_loss(model: nn.Module, batch: Tuple[List[torch.Tensor], List[Dict]], device: torch.device):
    """Engine loss_fn: the sum of the five losses (loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg, loss_mask);
    each part is logged, and detectron2's training diagnostics under its names (rpn/num_pos_anchors,
    roi_head/num_fg_samples, fast_rcnn/cls_accuracy, fast_rcnn/fg_cls_accuracy, mask_rcnn/accuracy, ...)."""
    images, targets = batch
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
               for t in targets]
    outputs = model(images, targets)
    losses = {k: v for k, v in outputs.items() if k.startswith("loss_")}
    return sum(losses.values()), {**{k: v.detach() for k, v in losses.items()},
                                  **{k: v for k, v in outputs.items() if k not in losses}}
