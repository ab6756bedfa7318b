"""The ViTDet Mask R-CNN with detectron2's semantics: losses and gradients, detectron2's formulas written out by hand
on small cases (anchors, level assignment, RoIAlignV2 on an analytic feature map, RPN and RoI losses on fixed
inputs, mask targets, sub-pixel paste), test-time mapping back, MAE weights in the backbone (checked against timm),
layer-decay groups."""
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

from maetransfer.config import load_config
from maetransfer.det.masks import _sample_masks, mask_targets, paste_masks_in_image, rasterize_polygons_within_box
from maetransfer.det.model import build_mask_rcnn, detection_loss
from maetransfer.det.roi_heads import ROIHeads, ROIPooler
from maetransfer.det.rpn import RPN, AnchorGenerator
from maetransfer.optim import param_groups

LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
TINY = ["model.arch=vit_micro", "model.embed_dim=32", "model.depth=4", "model.num_heads=2", "model.patch_size=8",
        "model.img_size=64", "model.pretrain_img_size=32", "model.window_size=4", "model.global_blocks=[1,3]",
        "model.out_channels=32", "model.head_dim=32", "model.box_fc_dim=64", "model.anchor_sizes=[8,16,32,64]"]


def tiny_cfg(*extra):
    return load_config("configs/det/demo.yaml", [*TINY, *extra])


def _targets():
    """One image with bitmask instances, one with polygon instances (the two mask formats of the data pipeline)."""
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    masks[1, 35:60, 20:50] = 1
    t1 = {"boxes": torch.tensor([[10.0, 8.0, 40.0, 30.0], [20.0, 35.0, 50.0, 60.0]]), "labels": torch.tensor([0, 2]),
          "masks": masks}
    square = np.array([5.0, 4.0, 25.0, 4.0, 25.0, 20.0, 5.0, 20.0])
    t2 = {"boxes": torch.tensor([[5.0, 4.0, 25.0, 20.0]]), "labels": torch.tensor([1]), "masks": [[square]]}
    return t1, t2


@pytest.mark.parametrize("pyramid", ["simple", "multilevel"])
def test_forward_backward_returns_detectron2_losses(pyramid):
    torch.manual_seed(0)
    extra = []
    if pyramid == "multilevel":
        extra = ["model.pyramid=multilevel", "model.pyramid_norm=BN", "model.head_norm=BN",
                 "model.scale_factors=[4.0,2.0,1.0,0.5]", "model.anchor_sizes=[8,16,32,64,128]"]
    model = build_mask_rcnn(tiny_cfg(*extra), num_classes=3)
    images = [torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), torch.randint(0, 256, (3, 32, 48),
                                                                                     dtype=torch.uint8)]
    loss, logs = detection_loss(model, (images, list(_targets())), torch.device("cpu"))
    assert {k for k in logs if k.startswith("loss_")} == LOSS_KEYS
    # detectron2's diagnostics, under its names; those of the foreground only when a foreground region was sampled
    with_foreground = {"fast_rcnn/fg_cls_accuracy", "fast_rcnn/false_negative", "mask_rcnn/accuracy",
                       "mask_rcnn/false_positive", "mask_rcnn/false_negative"}
    expected = {"rpn/num_pos_anchors", "rpn/num_neg_anchors", "roi_head/num_fg_samples", "roi_head/num_bg_samples",
                "fast_rcnn/cls_accuracy"} | (with_foreground if logs["roi_head/num_fg_samples"] > 0 else set())
    assert {k for k in logs if not k.startswith("loss_")} == expected
    assert torch.isfinite(loss) and loss.item() == pytest.approx(sum(float(logs[k]) for k in LOSS_KEYS), rel=1e-5)
    loss.backward()
    for name in ("backbone.net.blocks.0.attn.qkv.weight", "backbone.net.patch_embed.proj.weight",
                 "proposal_generator.rpn_head.objectness_logits.weight", "roi_heads.box_predictor.cls_score.weight",
                 "roi_heads.mask_head.predictor.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # DDP without find_unused_parameters needs every parameter in the graph


def test_detector_uses_detectron2_key_names_and_class_layout():
    model = build_mask_rcnn(tiny_cfg(), num_classes=3)
    state = model.state_dict()
    for key, shape in (("backbone.net.pos_embed", (1, 1 + 4 * 4, 32)),  # kept at the pretraining grid (32 px)
                       ("backbone.net.blocks.1.attn.rel_pos_h", (15, 16)),  # global block: 8x8 grid at 64 px
                       ("backbone.net.blocks.0.attn.rel_pos_h", (7, 16)),  # window 4
                       ("backbone.simfp_2.0.weight", (32, 16, 2, 2)), ("backbone.simfp_2.1.norm.weight", (32,)),
                       ("proposal_generator.rpn_head.conv.conv0.weight", (32, 32, 3, 3)),
                       ("proposal_generator.rpn_head.objectness_logits.weight", (3, 32, 1, 1)),
                       ("proposal_generator.rpn_head.anchor_deltas.weight", (12, 32, 1, 1)),
                       ("roi_heads.box_head.conv1.norm.weight", (32,)), ("roi_heads.box_head.fc1.weight", (64, 32 * 49)),
                       ("roi_heads.box_predictor.cls_score.weight", (4, 64)),  # K + 1, background last
                       ("roi_heads.box_predictor.bbox_pred.weight", (12, 64)),  # 4 per class, no background
                       ("roi_heads.mask_head.mask_fcn1.weight", (32, 32, 3, 3)),
                       ("roi_heads.mask_head.deconv.weight", (32, 32, 2, 2)),
                       ("roi_heads.mask_head.predictor.weight", (3, 32, 1, 1))):
        assert tuple(state[key].shape) == shape, key
    assert "roi_heads.box_head.conv1.bias" not in state  # normed convolutions have no bias, as in detectron2
    assert not any("anchor" in k and "cell" in k for k in state)  # anchors are not weights


def test_anchors_are_detectron2_unrounded_cell_anchors_at_offset_0():
    gen = AnchorGenerator(sizes=[32], aspect_ratios=[0.5, 1.0, 2.0], strides=[4])
    (anchors,) = gen([torch.zeros(1, 1, 2, 3)])
    w = math.sqrt(32.0 ** 2 / 0.5)  # 45.2548..., h = 0.5 * w = 22.6274...: torchvision would make 46 x 22
    expected_cells = torch.tensor([[-w / 2, -w / 4, w / 2, w / 4], [-16.0, -16.0, 16.0, 16.0],
                                   [-w / 4, -w / 2, w / 4, w / 2]])
    assert anchors.shape == (2 * 3 * 3, 4)
    torch.testing.assert_close(anchors[:3], expected_cells.float(), rtol=0, atol=0)
    # location-major: (row 1, col 2) is location 5, shifted by (8, 4) px
    torch.testing.assert_close(anchors[15:18], (expected_cells + torch.tensor([8.0, 4.0, 8.0, 4.0])).float(),
                               rtol=0, atol=0)


def test_roi_level_assignment_is_detectron2s_formula():
    pooler = ROIPooler(7, [4, 8, 16, 32])
    sides = torch.tensor([10.0, 111.9, 112.0, 223.9, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros(8), torch.zeros(8), sides, sides], dim=1)
    # floor(4 + log2(side / 224 + 1e-8)) clamped to 2..5, as an offset from level 2
    expected = [min(max(math.floor(4 + math.log2(s / 224 + 1e-8)), 2), 5) - 2 for s in sides.tolist()]
    assert pooler.levels(boxes).tolist() == expected == [0, 0, 1, 1, 2, 2, 3, 3]


def test_roi_pooler_is_roialign_v2_on_an_analytic_feature_map():
    """Feature value = x coordinate of the feature pixel centre in image pixels. ROIAlignV2 (aligned=True) samples the
    bin centres of the box itself, so the pooled values are those centres' x (aligned=False would be half a feature
    pixel, 2 px here, off)."""
    stride = 4
    xs = (torch.arange(32, dtype=torch.float32) + 0.5) * stride
    feature = xs.expand(1, 1, 32, 32).contiguous()
    pooler = ROIPooler(4, [stride])
    box = torch.tensor([[18.0, 20.0, 66.0, 60.0]])
    pooled = pooler([feature], [box])[0, 0]
    centres = 18.0 + (torch.arange(4, dtype=torch.float32) + 0.5) * (66.0 - 18.0) / 4
    torch.testing.assert_close(pooled, centres.expand(4, 4), atol=1e-4, rtol=0)


def _rpn(**kwargs):
    return RPN(channels=8, strides=[4], anchor_sizes=[16], aspect_ratios=[1.0], num_convs=1, **kwargs)


def test_rpn_losses_by_hand_l1_and_detectron2_normaliser():
    rpn = _rpn(batch_size_per_image=256)
    anchors = [torch.tensor([[0.0, 0.0, 16.0, 16.0], [4.0, 0.0, 20.0, 16.0], [40.0, 40.0, 56.0, 56.0],
                             [0.0, 8.0, 16.0, 24.0]])]
    gt = torch.tensor([[0.0, 0.0, 16.0, 18.0]])
    # IoU with gt: 256/288 = .889 (pos), 192/320 = .6 (ignored), 0 (neg), 160/320 = .5 (ignored)
    logits = [torch.tensor([[0.3, -1.2, 0.7, 2.0]])]
    deltas = [torch.tensor([[[0.1, -0.2, 0.05, 0.0], [0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3],
                             [0.0, 0.0, 0.0, 0.0]]])]
    losses = rpn.losses(anchors, logits, deltas, [gt])
    bce = math.log(1 + math.exp(-0.3)) + math.log(1 + math.exp(0.7))  # anchor 0 positive, anchor 2 negative
    target = [0.0, (9.0 - 8.0) / 16, 0.0, math.log(18.0 / 16)]  # dx, dy, dw, dh of gt vs anchor 0 (weights 1)
    l1 = sum(abs(p - t) for p, t in zip([0.1, -0.2, 0.05, 0.0], target))
    assert losses["loss_rpn_cls"].item() == pytest.approx(bce / 256, rel=1e-5)
    assert losses["loss_rpn_loc"].item() == pytest.approx(l1 / 256, rel=1e-5)  # L1, divided by 256 x 1 image


def test_rpn_proposals_clip_drop_empty_and_nms_per_level():
    rpn = _rpn(nms_thresh=0.7, post_nms_topk=(10, 3)).eval()
    boxes = [torch.tensor([[[-5.0, 2.0, 10.0, 12.0], [-4.0, 2.0, 10.0, 12.0], [30.0, 30.0, 30.0, 40.0],
                            [20.0, 20.0, 28.0, 28.0]]])]
    logits = [torch.tensor([[3.0, 2.0, 5.0, 1.0]])]
    (kept,) = rpn.select_proposals(boxes, logits, [(25, 40)])
    # box 2 is empty (zero width), box 1 clipped equals box 0 (suppressed), box 3 clipped to the 25 px height
    torch.testing.assert_close(kept, torch.tensor([[0.0, 2.0, 10.0, 12.0], [20.0, 20.0, 28.0, 25.0]]))
    # a second level's copy of box 0 suppresses nothing on the first level; best first, the best 3 kept
    boxes.append(torch.tensor([[[0.0, 2.0, 10.0, 12.0], [1.0, 2.0, 10.0, 12.0]]]))
    logits.append(torch.tensor([[4.0, 0.5]]))
    (kept,) = rpn.select_proposals(boxes, logits, [(25, 40)])
    torch.testing.assert_close(kept, torch.tensor([[0.0, 2.0, 10.0, 12.0], [0.0, 2.0, 10.0, 12.0],
                                                   [20.0, 20.0, 28.0, 25.0]]))


def _fixed_roi_heads(num_classes=2):
    """RoI heads whose predictor outputs the same logits and deltas for every region."""
    heads = ROIHeads(num_classes=num_classes, channels=4, strides=[4], box_pool_size=2, mask_pool_size=2, conv_dim=4,
                     box_head_convs=0, box_fc_dim=4, mask_head_convs=1, norm="", batch_size_per_image=512,
                     positive_fraction=1.0)
    with torch.no_grad():
        for layer in (heads.box_predictor.cls_score, heads.box_predictor.bbox_pred):
            layer.weight.zero_()
        heads.box_predictor.cls_score.bias.copy_(torch.tensor([1.0, -0.5, 0.25]))
        heads.box_predictor.bbox_pred.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 0.1, -0.1, 0.2, 0.0]))
    return heads


def test_roi_box_losses_on_fixed_proposals_by_hand():
    heads = _fixed_roi_heads()
    features = [torch.rand(1, 4, 16, 16)]
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 34.0], [40.0, 40.0, 60.0, 60.0]])]  # IoU .83 (fg), 0 (bg)
    targets = [{"boxes": gt, "labels": torch.tensor([1]), "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)}]
    losses = heads.losses(features, proposals, targets)
    # regions: the two proposals and the appended gt box; classes 1, background (2), 1
    log_z = math.log(math.exp(1.0) + math.exp(-0.5) + math.exp(0.25))
    ce = (2 * (log_z + 0.5) + (log_z - 0.25)) / 3
    assert losses["loss_cls"].item() == pytest.approx(ce, rel=1e-5)
    # class 1 deltas (0.1, -0.1, 0.2, 0) against weights (10, 10, 5, 5): proposal 0 -> gt and gt -> gt
    t0 = [0.0, 10 * (20.0 - 22.0) / 24, 0.0, 5 * math.log(20.0 / 24)]
    l1 = sum(abs(p - t) for p, t in zip([0.1, -0.1, 0.2, 0.0], t0)) + sum(abs(p) for p in [0.1, -0.1, 0.2, 0.0])
    assert losses["loss_box_reg"].item() == pytest.approx(l1 / 3, rel=1e-5)  # L1, divided by all 3 regions


def test_test_time_detections_threshold_nms_per_class_and_background_last():
    heads = _fixed_roi_heads().eval()
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.04, 0.9, 0.06], [0.6, 0.1, 0.3]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0] * 2, [20.0, 20.0, 30.0, 30.0] * 2, [1.0, 0.0, 11.0, 10.0, 0.0, 0.0,
                                                                                     90.0, 90.0]])
    out = heads.detect(boxes, probs, (50, 50))
    # class 0: 0.5 and 0.6 overlap (IoU .82) -> 0.6; class 1: 0.3, 0.9, 0.1 (the box clipped to 50 x 50); the last
    # column is the background and never detected; 0.04 is under the 0.05 threshold
    assert out["scores"].tolist() == pytest.approx([0.9, 0.6, 0.3, 0.1])
    assert out["labels"].tolist() == [1, 0, 1, 1]
    assert out["boxes"][3].tolist() == [0.0, 0.0, 50.0, 50.0]


def test_polygon_mask_targets_are_rasterised_inside_each_box():
    square = [np.array([4.0, 4.0, 12.0, 4.0, 12.0, 12.0, 4.0, 12.0])]
    inside = rasterize_polygons_within_box(square, np.array([4.0, 4.0, 12.0, 12.0], np.float32), 8)
    assert inside.all()  # the polygon is the box: every target pixel is set
    half = rasterize_polygons_within_box(square, np.array([8.0, 4.0, 16.0, 12.0], np.float32), 8)
    assert half[:, :4].all() and not half[:, 4:].any()  # left half of the box
    # instance 1 is the square, instance 0 another shape: each box is cropped from its matched instance
    bitmask = torch.zeros(2, 16, 16, dtype=torch.uint8)
    bitmask[0, 12:, :] = 1
    bitmask[1, 4:12, 4:12] = 1
    boxes = torch.tensor([[8.0, 4.0, 16.0, 12.0], [4.0, 4.0, 12.0, 12.0], [0.0, 8.0, 16.0, 16.0]])
    crop = mask_targets(bitmask, torch.tensor([1, 1, 0]), boxes, 8)
    assert crop[0, :, :4].all() and not crop[0, :, 4:].any()  # RoIAlign aligned=True, >= 0.5
    assert crop[1].all() and crop[2, 4:].all() and not crop[2, :4].any()
    other = [np.array([0.0, 12.0, 16.0, 12.0, 16.0, 16.0, 0.0, 16.0])]
    targets = mask_targets([other, square], torch.tensor([1, 1, 0]), boxes, 8)
    assert torch.equal(targets, torch.stack([half, inside, targets[2]])) and torch.equal(targets, crop)


def _bilinear_profile(profile: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Linear interpolation of a 1-D mask profile at continuous positions u (pixel i at u = i), zero outside."""
    padded = np.concatenate([[0.0], profile, [0.0]])
    i = np.floor(u).astype(int)
    f = u - i
    lo, hi = np.clip(i + 1, 0, len(padded) - 1), np.clip(i + 2, 0, len(padded) - 1)
    return np.where((i >= -1) & (i <= len(profile) - 1), (1 - f) * padded[lo] + f * padded[hi], 0.0)


def test_paste_samples_the_mask_at_the_pixel_centres_of_the_sub_pixel_box():
    """Analytic geometry: pixel centre c maps to mask position u = (c - x0) / (x1 - x0) * M - 0.5; the pasted value
    is the bilinear value of the mask there. A mask of ones covers the pixels whose centres are in the box (bar the
    corners, where two half-weights meet); a left-half mask is cut at the box centre."""
    rng = np.random.default_rng(0)
    centres = np.arange(48) + 0.5
    for _ in range(20):
        x0, y0 = rng.uniform(0, 20, 2)
        x1, y1 = x0 + rng.uniform(3, 20), y0 + rng.uniform(3, 20)
        box = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)
        bx = box[0].double().numpy()
        ux = (centres - bx[0]) / (bx[2] - bx[0]) * 28 - 0.5
        uy = (centres - bx[1]) / (bx[3] - bx[1]) * 28 - 0.5
        for columns in (np.ones(28), np.r_[np.ones(14), np.zeros(14)]):
            mask = torch.from_numpy(np.tile(columns, (28, 1))).float()[None]
            expected = _bilinear_profile(np.ones(28), uy)[:, None] * _bilinear_profile(columns, ux)[None, :] >= 0.5
            pasted = paste_masks_in_image(mask, box, (48, 48))[0]
            assert np.array_equal(pasted.numpy(), expected)
        # the GPU path samples every mask over the whole image: the same pixels
        whole, _ = _sample_masks(mask, box, (48, 48), around_boxes=False)
        assert torch.equal(whole >= 0.5, pasted[None])
        inside = (centres >= bx[0] + 0.5) & (centres <= bx[2] - 0.5)  # one pixel in from the edges: no corner cases
        rows = (centres >= bx[1] + 0.5) & (centres <= bx[3] - 0.5)
        assert pasted.numpy()[np.ix_(rows, inside & (centres < (bx[0] + bx[2]) / 2))].all()


def test_inference_maps_back_to_output_size_and_pads_to_the_square():
    torch.manual_seed(0)
    cfg = tiny_cfg("model.box_score_thresh=0.0")
    model = build_mask_rcnn(cfg, num_classes=3).eval()
    images = [torch.randint(0, 256, (3, 64, 32), dtype=torch.uint8), torch.randint(0, 256, (3, 64, 64),
                                                                                     dtype=torch.uint8)]
    with torch.no_grad():
        batch, sizes = model.preprocess(images)
        plain = model(images)
        out = model(images, output_sizes=[(32, 16), (128, 128)])
    assert sizes == [(64, 32), (64, 64)] and batch.shape == (2, 3, 64, 64)
    assert torch.all(batch[0, :, :, 32:] == 0)  # zero padding after normalisation
    mean = torch.tensor(cfg.data.mean)[:, None, None]
    std = torch.tensor(cfg.data.std)[:, None, None]
    torch.testing.assert_close(batch[1], (images[1] - mean) / std)
    assert out[0]["masks"].shape[-2:] == (32, 16) and out[1]["masks"].shape[-2:] == (128, 128)
    assert out[0]["masks"].dtype == torch.bool and set(out[0]) == {"boxes", "labels", "scores", "masks"}
    # boxes scaled by output / input size (x0.5 for image 0, x2 for image 1) and clipped
    assert len(plain[1]["boxes"]) == len(out[1]["boxes"])
    torch.testing.assert_close(out[1]["boxes"], (plain[1]["boxes"] * 2).clamp(max=128))
    assert out[0]["boxes"][:, 2].max() <= 16 and out[0]["boxes"][:, 3].max() <= 32
    with pytest.raises(ValueError, match="larger than the 64 px square"):
        model([torch.zeros(3, 65, 10, dtype=torch.uint8)])


def test_mae_encoder_from_timm_loads_into_the_backbone(tmp_path):
    torch.manual_seed(0)
    # an independent encoder: timm's ViT in the official MAE key layout, 32-px grid of 8-px patches
    reference = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                                  embed_dim=32, depth=4, num_heads=2)
    path = tmp_path / "mae_encoder.pth"
    torch.save({"model": reference.state_dict()}, path)
    model = build_mask_rcnn(tiny_cfg(), num_classes=3)
    from maetransfer.det.train import load_pretrained
    load_pretrained(model, str(path))
    net, ref = model.backbone.net.state_dict(), reference.state_dict()
    for key in ("blocks.3.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "patch_embed.proj.weight", "pos_embed"):
        assert torch.equal(net[key], ref[key]), key  # pos_embed stays at the 4x4 pretraining grid
    assert torch.all(net["blocks.1.attn.rel_pos_h"] == 0)  # rel-pos tables start at zero
    # ... and is interpolated to the 8x8 grid of a 64 px input in forward, as detectron2's get_abs_pos
    grid = ref["pos_embed"][:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(model.backbone.net.pos_embed_for((8, 8))[:, 1:], expected.reshape(1, 64, 32))


def test_layer_decay_reaches_the_backbone_only():
    from maetransfer.det.train import vitdet_no_decay

    model = build_mask_rcnn(tiny_cfg(), num_classes=3)
    groups = param_groups(model, 0.1, 0.7, num_layers=model.backbone.net.depth + 1,
                          no_decay=vitdet_no_decay(model))
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    decay = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert scale["backbone.net.blocks.3.attn.qkv.weight"] == pytest.approx(0.7)
    assert scale["backbone.net.blocks.0.attn.qkv.weight"] == pytest.approx(0.7 ** 4)
    assert scale["backbone.net.patch_embed.proj.weight"] == pytest.approx(0.7 ** 5)
    assert scale["backbone.simfp_2.0.weight"] == 1.0 and scale["roi_heads.box_head.conv1.weight"] == 1.0
    # weight decay as detectron2's ViTDet optimizer gives it (tests/test_det_trajectory_oracle.py): off for the ViT's
    # LayerNorms and pos_embed only; biases, rel-pos tables and the channels-first LayerNorms of pyramid and heads
    # (detectron2's own LayerNorm class, not in its list of norm types) are decayed
    assert decay["backbone.net.pos_embed"] == 0.0 and decay["backbone.net.blocks.0.norm1.weight"] == 0.0
    assert decay["backbone.net.blocks.0.norm2.bias"] == 0.0 and decay["backbone.net.blocks.0.mlp.fc1.weight"] == 0.1
    for name in ("backbone.net.blocks.1.attn.rel_pos_h", "backbone.net.blocks.0.mlp.fc1.bias",
                 "backbone.simfp_2.1.norm.weight", "roi_heads.box_head.conv1.norm.bias",
                 "roi_heads.box_predictor.cls_score.bias"):
        assert decay[name] == 0.1, name


def test_roi_pooling_under_bf16_autocast_keeps_the_box_coordinates():
    """With bf16 features the boxes must not be rounded to bf16 (up to 4 px at 1024): the pooled features equal
    torchvision's fp32 roi_align of the same feature values at the exact boxes, to bf16 output precision."""
    from torchvision.ops import roi_align

    torch.manual_seed(0)
    features = torch.randn(1, 4, 64, 64).bfloat16()  # stride 16 over 1024 px
    boxes = torch.tensor([[517.9, 611.1, 903.7, 1001.3], [700.3, 250.6, 1010.1, 640.9]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = ROIPooler(7, [16])([features], [boxes])
    reference = roi_align(features.float(), [boxes], (7, 7), 1 / 16, 0, True)
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled.float(), reference, rtol=1e-2, atol=1e-2)


def _random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 200
    return torch.cat([xy, xy + 20 + torch.rand(n, 2, generator=generator) * 130], dim=1)  # size ratios < 1000/16


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_transform_equals_torchvisions_box_coder(weights):
    """Box2BoxTransform against torchvision's BoxCoder (the same detectron2 formulas), bit for bit, clamp included."""
    from torchvision.models.detection._utils import BoxCoder

    from maetransfer.det.boxes import SCALE_CLAMP, Box2BoxTransform

    g = torch.Generator().manual_seed(0)
    src, dst = _random_boxes(500, g), _random_boxes(500, g)
    ours, reference = Box2BoxTransform(weights), BoxCoder(weights, bbox_xform_clip=SCALE_CLAMP)
    assert torch.equal(ours.get_deltas(src, dst), reference.encode_single(dst, src))
    deltas = torch.randn(500, 12, generator=g) * 3  # 3 classes; some dw/dh beyond the clamp
    deltas[:5, 2] = 50.0
    assert torch.equal(ours.apply_deltas(deltas, src), reference.decode_single(deltas, src))
    assert torch.allclose(ours.apply_deltas(ours.get_deltas(src, dst), src), dst, atol=1e-3)


@pytest.mark.parametrize("low, high, low_quality", [(0.3, 0.7, True), (0.5, 0.5, False)])
def test_matcher_equals_torchvisions_matcher(low, high, low_quality):
    """Labels and matched indices of the foreground against torchvision's Matcher on IoUs with ties and zeros."""
    from torchvision.models.detection._utils import Matcher as Reference
    from torchvision.ops import box_iou

    from maetransfer.det.boxes import Matcher

    g = torch.Generator().manual_seed(1)
    anchors = _random_boxes(300, g)
    gt = torch.cat([_random_boxes(6, g), anchors[:2]])  # exact matches: IoU 1 ties
    quality = box_iou(gt, anchors)
    matches, labels = Matcher(low, high, low_quality)(quality)
    reference = Reference(high, low, allow_low_quality_matches=low_quality)(quality.clone())
    expected = torch.where(reference >= 0, 1, torch.where(reference == Reference.BELOW_LOW_THRESHOLD, 0, -1))
    assert torch.equal(labels, expected)
    assert torch.equal(matches[labels == 1], reference[labels == 1])
    assert (labels == 1).sum() > 0 and (labels == 0).sum() > 0
