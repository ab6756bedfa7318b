"""The ViTDet-style Mask R-CNN: losses and gradients, test-time resize and mapping back, fixed square padding, RoI
level scales, both pyramids, MAE weights loaded into the backbone (checked against timm), layer-decay groups."""
import pytest
import timm
import torch

from maetransfer.config import load_config
from maetransfer.det.model import build_mask_rcnn, detection_loss
from maetransfer.optim import param_groups

LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
TINY = ["model.arch=vit_micro", "model.embed_dim=32", "model.depth=4", "model.num_heads=2", "model.patch_size=8",
        "model.img_size=64", "model.window_size=4", "model.global_blocks=[1,3]", "model.out_channels=32",
        "model.head_dim=32", "model.box_fc_dim=64", "model.anchor_sizes=[8,16,32,64]"]


def tiny_cfg(*extra):
    return load_config("configs/det/demo.yaml", [*TINY, *extra])


def _targets():
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    masks[1, 35:60, 20:50] = 1
    boxes = torch.tensor([[10.0, 8.0, 40.0, 30.0], [20.0, 35.0, 50.0, 60.0]])
    t1 = {"boxes": boxes, "labels": torch.tensor([1, 3]), "masks": masks}
    t2 = {"boxes": boxes[:1] / 2, "labels": torch.tensor([2]), "masks": masks[:1, :32, :48].contiguous()}
    return t1, t2


@pytest.mark.parametrize("pyramid", ["simple", "multilevel"])
def test_forward_backward_returns_torchvision_losses(pyramid):
    torch.manual_seed(0)
    extra = []
    if pyramid == "multilevel":
        extra = ["model.pyramid=multilevel", "model.pyramid_norm=BN", "model.head_norm=BN",
                 "model.scale_factors=[4.0,2.0,1.0,0.5]", "model.anchor_sizes=[8,16,32,64,128]"]
    model = build_mask_rcnn(tiny_cfg(*extra).model, num_classes=3)
    t1, t2 = _targets()
    images = [torch.rand(3, 64, 64) * 255, torch.rand(3, 32, 48) * 255]  # LSJ output: smaller than the square
    loss, logs = detection_loss(model, (images, [t1, t2]), torch.device("cpu"))
    assert set(logs) == LOSS_KEYS
    assert torch.isfinite(loss) and loss.item() == pytest.approx(sum(float(v) for v in logs.values()), rel=1e-5)
    loss.backward()
    for name in ("backbone.net.blocks.0.attn.qkv.weight", "backbone.net.patch_embed.proj.weight",
                 "rpn.head.conv.0.0.weight", "roi_heads.box_predictor.cls_score.weight",
                 "roi_heads.mask_predictor.mask_fcn_logits.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []  # DDP without find_unused_parameters needs every parameter in the graph


def test_inference_resizes_longest_side_and_maps_back_to_the_original_size():
    torch.manual_seed(0)
    cfg = tiny_cfg("model.box_score_thresh=0.0")
    model = build_mask_rcnn(cfg.model, num_classes=3).eval()
    images = [torch.rand(3, 40, 20) * 255, torch.rand(3, 64, 64) * 255]
    with torch.no_grad():
        batch, _ = model.transform(images)
        out = model(images)
    # ViTDet's ResizeShortestEdge(64, max_size=64): 40 x 20 -> 64 x 32; then every batch padded to 64 x 64
    assert batch.image_sizes == [(64, 32), (64, 64)]
    assert batch.tensors.shape == (2, 3, 64, 64)
    assert torch.all(batch.tensors[0, :, :, 32:] == 0)
    mean = torch.tensor(cfg.model.pixel_mean)[:, None, None]
    std = torch.tensor(cfg.model.pixel_std)[:, None, None]
    assert torch.allclose(batch.tensors[1], (images[1] - mean) / std, atol=1e-5)
    assert out[0]["masks"].shape[-2:] == (40, 20) and out[1]["masks"].shape[-2:] == (64, 64)
    assert len(out[0]["boxes"]) > 0
    assert out[0]["boxes"][:, 2].max() <= 20 and out[0]["boxes"][:, 3].max() <= 40
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"}


def test_roi_pooler_scales_come_from_strides_not_from_the_first_batch():
    model = build_mask_rcnn(tiny_cfg().model, num_classes=3)
    pool = model.roi_heads.box_roi_pool
    assert pool.featmap_names == ["p2", "p3", "p4"] and pool.scales == [1 / 4, 1 / 8, 1 / 16]
    feats = model.backbone(torch.zeros(1, 3, 64, 64))
    # a batch whose only image is a tiny LSJ crop must not change the scales (torchvision would infer 2 ** 0 here)
    pool(feats, [torch.tensor([[0.0, 0.0, 8.0, 8.0]])], [(16, 16)])
    assert pool.scales == [1 / 4, 1 / 8, 1 / 16]
    assert list(model.backbone.strides.items()) == [("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32)]


def test_mae_encoder_from_timm_loads_into_the_backbone(tmp_path):
    torch.manual_seed(0)
    # an independent encoder: timm's ViT in the official MAE key layout, 32-px grid of 8-px patches
    reference = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                                  embed_dim=32, depth=4, num_heads=2)
    path = tmp_path / "mae_encoder.pth"
    torch.save({"model": reference.state_dict()}, path)
    model = build_mask_rcnn(tiny_cfg().model, num_classes=3)
    from maetransfer.det.train import load_pretrained
    load_pretrained(model, str(path))
    net, ref = model.backbone.net.state_dict(), reference.state_dict()
    for key in ("blocks.3.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "patch_embed.proj.weight"):
        assert torch.equal(net[key], ref[key]), key
    from maetransfer.models.pos_embed import interpolate_pos_embed
    assert torch.allclose(net["pos_embed"], interpolate_pos_embed(ref["pos_embed"], (8, 8), (4, 4)))
    assert torch.all(net["blocks.1.attn.rel_pos_h"] == 0)  # rel-pos tables start at zero


def test_layer_decay_reaches_the_backbone_only():
    model = build_mask_rcnn(tiny_cfg().model, num_classes=3)
    groups = param_groups(model, 0.1, 0.7, num_layers=model.backbone.net.depth + 1)
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    decay = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert scale["backbone.net.blocks.3.attn.qkv.weight"] == pytest.approx(0.7)
    assert scale["backbone.net.blocks.0.attn.qkv.weight"] == pytest.approx(0.7 ** 4)
    assert scale["backbone.net.patch_embed.proj.weight"] == pytest.approx(0.7 ** 5)
    assert scale["backbone.pyramid.simfp_2.0.weight"] == 1.0 and scale["roi_heads.box_head.0.0.weight"] == 1.0
    assert decay["backbone.net.blocks.1.attn.rel_pos_h"] == 0.0 and decay["backbone.net.pos_embed"] == 0.0
    assert decay["backbone.net.blocks.0.norm1.weight"] == 0.0 and decay["backbone.net.blocks.0.mlp.fc1.weight"] == 0.1
