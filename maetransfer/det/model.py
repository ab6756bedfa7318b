"""Mask R-CNN with an MAE ViT backbone, assembled from torchvision.models.detection parts in the ViTDet layout.

ViTDet (Li et al. 2022; detectron2 projects/ViTDet): plain ViT with windowed attention, a few global blocks and
decomposed relative positions -> SimpleFeaturePyramid (p2..p6, LN) -> RPN with 2 convs -> box head of 4 convs (LN)
+ 1 fc -> mask head of 4 convs (LN). The MAE paper's Table 4 set-up instead takes 4 blocks at depth/4 steps through
a multi-level pyramid and a standard FPN, with BN. Images are padded to a fixed square as ViTDet does; training
images come already jittered (LSJ) so the torchvision transform never resizes them, and at test time it resizes the
longest side to the test size (ViTDet's ResizeShortestEdge(size, max_size=size)) and maps predictions back.

Known differences from detectron2 that come with torchvision's parts: RoIAlign with aligned=False (detectron2's
ROIAlignV2 uses aligned=True) and smooth-L1 box losses (beta 1/9) where ViTDet uses L1.
"""
from collections import OrderedDict
from functools import partial
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import initLevelMapper

from ..models import MultiLevelPyramid, SimpleFeaturePyramid, VisionTransformer, build_norm, build_vit, vit_out_indices


def _norm_layer(norm: str):
    """torchvision heads take a `norm_layer(channels)` factory, None for plain convolutions with bias."""
    return partial(build_norm, norm) if norm else None


class ViTDetBackbone(nn.Module):
    """ViT + feature pyramid with the interface GeneralizedRCNN expects: `forward(images) -> OrderedDict` of maps
    named p<k> (stride 2**k, listed in `strides`; the last is the extra max-pool level), all `out_channels` wide.
    The ViT is `.net` (detectron2's naming, so encoder keys read `backbone.net.*`).

    pyramid='simple': ViTDet SimpleFeaturePyramid on the last block (its strides follow the ViT's patch size).
    pyramid='multilevel': MAE paper Table 4 - blocks at depth/4 steps -> MultiLevelPyramid -> FPN + max-pool p6.
    """

    def __init__(self, net: VisionTransformer, pyramid: str = "simple", out_channels: int = 256,
                 scale_factors=(4.0, 2.0, 1.0, 0.5), norm: str = "LN", fpn_norm: str = "BN"):
        super().__init__()
        self.net = net
        self.kind = pyramid
        self.out_channels = out_channels
        dim, stride = net.embed_dim, net.patch_size
        if pyramid == "simple":
            self.pyramid = SimpleFeaturePyramid(dim, out_channels, scale_factors, norm, top_block=True,
                                                in_stride=stride)
            self.strides = OrderedDict(self.pyramid.strides)
        elif pyramid == "multilevel":
            self.out_indices = vit_out_indices(net.depth, len(scale_factors))
            self.pyramid = MultiLevelPyramid(dim, norm, scale_factors, in_stride=stride)
            self.fpn = FeaturePyramidNetwork(self.pyramid.out_channels, out_channels, extra_blocks=LastLevelMaxPool(),
                                             norm_layer=_norm_layer(fpn_norm))
            strides = self.pyramid.strides + [self.pyramid.strides[-1] * 2]  # + the FPN's max-pool level
            self.strides = OrderedDict((f"p{s.bit_length() - 1}", s) for s in strides)
        else:
            raise ValueError(f"unknown pyramid {pyramid!r}: expected 'simple' or 'multilevel'")

    def forward(self, images: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if self.kind == "simple":
            return self.pyramid(self.net.forward_maps(images, [self.net.depth - 1])[0])
        maps = self.pyramid(self.net.forward_maps(images, self.out_indices))
        outs = self.fpn(OrderedDict(zip(self.strides, maps)))
        return OrderedDict(zip(self.strides, outs.values()))  # FPN names its extra level 'pool'


class SquarePadTransform(GeneralizedRCNNTransform):
    """torchvision's normalise/resize/batch step with ViTDet's conventions: no resizing while training (the data
    pipeline applies LSJ), longest side to `test_size` at test time, and every batch zero-padded (after
    normalisation) to a fixed `pad_size` square."""

    def __init__(self, pad_size: int, test_size: int, image_mean, image_std, size_divisible: int = 32):
        super().__init__(min_size=test_size, max_size=test_size, image_mean=list(image_mean),
                         image_std=list(image_std), size_divisible=size_divisible, _skip_resize=True)
        self.pad_size = pad_size

    def batch_images(self, images: List[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        batch = super().batch_images(images, size_divisible)
        h, w = batch.shape[-2:]
        return F.pad(batch, (0, max(0, self.pad_size - w), 0, max(0, self.pad_size - h)))


def fixed_scale_roi_align(strides: "OrderedDict[str, int]", output_size: int) -> MultiScaleRoIAlign:
    """MultiScaleRoIAlign with its level scales set from the known strides. torchvision otherwise infers them once,
    from the first batch's largest unpadded image: with fixed square padding a batch of small LSJ crops would fix
    wrong scales for the whole run. sampling_ratio 0 (adaptive) as detectron2's ROIAlignV2."""
    pool = MultiScaleRoIAlign(list(strides), output_size, sampling_ratio=0)
    levels = [int(s).bit_length() - 1 for s in strides.values()]
    pool.scales = [1.0 / s for s in strides.values()]
    pool.map_levels = initLevelMapper(levels[0], levels[-1], canonical_scale=pool.canonical_scale,
                                      canonical_level=pool.canonical_level)
    return pool


def _size_overrides(model_cfg) -> Dict:
    """Architecture keys set in the config (null = the named size's value)."""
    return {k: model_cfg[k] for k in ("embed_dim", "depth", "num_heads", "patch_size") if model_cfg[k] is not None}


def build_backbone(model_cfg) -> ViTDetBackbone:
    m = model_cfg
    net = build_vit(m.arch, img_size=m.img_size, class_token=False, window_size=m.window_size,
                    global_blocks=list(m.global_blocks), rel_pos=m.rel_pos or None, drop_path_rate=m.drop_path_rate,
                    grad_checkpointing=m.grad_checkpointing, **_size_overrides(m))
    # Dense heads read block outputs; the final norm would be a parameter without gradient (and breaks DDP).
    net.norm = nn.Identity()
    return ViTDetBackbone(net, m.pyramid, m.out_channels, tuple(m.scale_factors), m.pyramid_norm, m.fpn_norm)


def build_mask_rcnn(model_cfg, num_classes: int) -> MaskRCNN:
    """Mask R-CNN for `num_classes` object categories (+ background) from the `model:` config section."""
    m = model_cfg
    backbone = build_backbone(m)
    levels = list(backbone.strides)
    if len(m.anchor_sizes) != len(levels):
        raise ValueError(f"model.anchor_sizes has {len(m.anchor_sizes)} entries but the pyramid has "
                         f"{len(levels)} levels ({', '.join(levels)})")
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in m.anchor_sizes),
                              aspect_ratios=(tuple(float(a) for a in m.aspect_ratios),) * len(levels))
    channels = backbone.out_channels
    rpn_head = RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=m.rpn_convs)
    # The extra max-pool level only feeds the RPN, as detectron2's box_in_features p2..p5.
    roi_strides = OrderedDict(list(backbone.strides.items())[:-1])
    box_pool = fixed_scale_roi_align(roi_strides, m.box_pool_size)
    mask_pool = fixed_scale_roi_align(roi_strides, m.mask_pool_size)
    head_norm = _norm_layer(m.head_norm)
    box_head = FastRCNNConvFCHead((channels, m.box_pool_size, m.box_pool_size), [m.head_dim] * m.box_head_convs,
                                  [m.box_fc_dim], norm_layer=head_norm)
    mask_head = MaskRCNNHeads(channels, [m.head_dim] * m.mask_head_convs, 1, norm_layer=head_norm)
    model = MaskRCNN(
        backbone, num_classes=None,
        rpn_anchor_generator=anchors, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=m.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=m.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=m.rpn_post_nms_top_n_train, rpn_post_nms_top_n_test=m.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=m.rpn_batch_size_per_image,
        box_roi_pool=box_pool, box_head=box_head, box_predictor=FastRCNNPredictor(m.box_fc_dim, num_classes + 1),
        box_score_thresh=m.box_score_thresh, box_nms_thresh=m.box_nms_thresh,
        box_detections_per_img=m.detections_per_img, box_batch_size_per_image=m.box_batch_size_per_image,
        mask_roi_pool=mask_pool, mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(m.head_dim, m.head_dim, num_classes + 1))
    model.transform = SquarePadTransform(m.img_size, m.img_size, m.pixel_mean, m.pixel_std)
    return model


def detection_loss(model: nn.Module, batch: Tuple[List[torch.Tensor], List[Dict]], device: torch.device):
    """Engine loss_fn: the sum of torchvision's loss dict (RPN objectness/box, RoI classifier/box, mask); each part
    is logged."""
    images, targets = batch
    images = [img.to(device, non_blocking=True) for img in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    losses = model(images, targets)
    return sum(losses.values()), {k: v.detach() for k, v in losses.items()}
