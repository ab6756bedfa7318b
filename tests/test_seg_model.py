"""UperNet segmentor shapes, losses, mmseg parameter names, and sliding-window inference."""
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from maetransfer.config import load_config
from maetransfer.optim import no_decay_on, param_groups
from maetransfer.seg.heads import UPerHead
from maetransfer.seg.inference import predict, slide_inference, slide_windows
from maetransfer.seg.segmentor import build_segmentor, pixel_accuracy, seg_cross_entropy

TINY = ["model.arch=vit_micro", "model.img_size=64", "model.out_indices=null", "model.channels=16",
        "model.aux_channels=8", "model.num_classes=5", "model.drop_path_rate=0.0"]


@pytest.fixture(scope="module")
def cfg():
    return load_config("configs/seg/base.yaml", TINY)


@pytest.fixture(scope="module")
def model(cfg):
    torch.manual_seed(0)
    return build_segmentor(cfg.model)


def test_uperhead_shapes():
    head = UPerHead([8, 8, 8, 8], channels=16, num_classes=3)
    maps = [torch.randn(2, 8, s, s) for s in (32, 16, 8, 4)]
    assert head(maps).shape == (2, 3, 32, 32)


def test_forward_shapes_and_losses(model):
    x = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 5, (2, 64, 64))
    labels[:, :8] = 255
    model.train()
    feats = model.extract_feat(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]  # strides 4, 8, 16, 32
    assert model(x).shape == (2, 5, 16, 16)
    torch.manual_seed(1)
    losses = model(x, labels)
    assert set(losses) == {"loss_ce", "aux_loss_ce", "acc_seg"}
    torch.manual_seed(1)   # same dropout masks: recompute the terms independently
    feats = model.extract_feat(x)
    main, aux = model.decode_head(feats), model.auxiliary_head(feats)

    def ce(logits):   # mmseg: bilinear to the label size, CE summed over labelled pixels / all pixels
        up = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
        return torch.nn.CrossEntropyLoss(ignore_index=255, reduction="sum")(up, labels) / labels.numel()

    torch.testing.assert_close(losses["loss_ce"], ce(main))
    torch.testing.assert_close(losses["aux_loss_ce"], 0.4 * ce(aux))
    sum(v for k, v in losses.items() if "loss" in k).backward()
    assert model.backbone.blocks[0].attn.relative_position_bias_table.grad is not None


def test_cross_entropy_averaging():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])   # 2 classes, 1 x 2 pixels
    labels = torch.tensor([[[0, 255]]])
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    torch.testing.assert_close(seg_cross_entropy(logits, labels), expected / 2)            # mmseg default
    torch.testing.assert_close(seg_cross_entropy(logits, labels, avg_non_ignore=True), expected)


def test_mmseg_names_and_layer_decay(model):
    keys = set(model.state_dict())
    # names in mmseg's released UperNet-MAE checkpoint (decode head, auxiliary head, Feature2Pyramid neck)
    for k in ["decode_head.psp_modules.3.1.conv.weight", "decode_head.psp_modules.0.1.bn.running_var",
              "decode_head.bottleneck.conv.weight", "decode_head.lateral_convs.2.bn.weight",
              "decode_head.fpn_convs.0.conv.weight", "decode_head.fpn_bottleneck.conv.weight",
              "decode_head.conv_seg.bias", "auxiliary_head.convs.0.conv.weight", "auxiliary_head.conv_seg.weight",
              "neck.upsample_4x.0.weight", "neck.upsample_4x.1.running_mean", "neck.upsample_4x.3.weight",
              "neck.upsample_2x.0.weight"]:
        assert k in keys, k
    assert not any(k.startswith("backbone.norm.") for k in keys)  # no final norm (mmseg final_norm=False)
    groups = param_groups(model, 0.05, 0.65, no_decay=no_decay_on(()), num_layers=model.depth + 1)
    by_name = {n: g for g in groups for n in g["param_names"]}
    depth = model.depth
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.65 ** depth)
    assert by_name["backbone.pos_embed"]["lr_scale"] == pytest.approx(0.65 ** (depth + 1))
    assert by_name["decode_head.conv_seg.weight"]["lr_scale"] == 1.0
    assert by_name["neck.upsample_4x.0.weight"]["lr_scale"] == 1.0
    # mmseg's effective rule: only 1-D tensors are exempt from weight decay
    assert by_name["backbone.pos_embed"]["weight_decay"] == 0.05
    assert by_name["backbone.blocks.1.attn.relative_position_bias_table"]["weight_decay"] == 0.05
    assert by_name["backbone.blocks.1.ls1.gamma"]["weight_decay"] == 0.0


def test_slide_windows_by_hand():
    # width 7, crop 4, stride 2: starts 0, 2, then 4 would overrun -> moved back to end at the border (3)
    assert [w[2:] for w in slide_windows(4, 7, (4, 4), (2, 2))] == [(0, 4), (2, 6), (3, 7)]
    assert list(slide_windows(3, 5, (8, 8), (4, 4))) == [(0, 3, 0, 5)]   # crop larger than the image


def test_slide_overlap_average_by_hand():
    # the image's value at column x is x; the dummy model paints every window with its first column's value
    image = torch.arange(6.0).expand(1, 3, 4, 6).contiguous()

    def dummy(crops):
        return crops[:, :1, :1, :1].expand(-1, 1, crops.shape[2], crops.shape[3])

    out = slide_inference(dummy, image, 1, crop=(4, 4), stride=(1, 1), batch=2)
    # windows start at columns 0, 1, 2: column c averages the starts of the windows covering it
    expected = torch.tensor([0, 0.5, 1, 1, 1.5, 2])
    torch.testing.assert_close(out[0, 0], expected.expand(4, 6))


def test_slide_equals_whole_when_crop_covers(model):
    model.eval()
    torch.manual_seed(0)
    for shape in [(64, 64), (48, 64)]:
        x = torch.randn(1, 3, *shape)
        with torch.no_grad():
            whole = model.encode_decode(x)
            slide = slide_inference(model.encode_decode, x, 5, crop=(64, 64), stride=(43, 43))
        torch.testing.assert_close(slide, whole)


def test_predict_multiscale_flip_probabilities(model, cfg):
    model.eval()
    eval_cfg = OmegaConf.merge(cfg.eval, {"crop_size": [64, 64], "stride": [43, 43], "multi_scale": True,
                                          "ratios": [0.5, 1.0], "flip": True, "min_size": 32})
    image = torch.randint(0, 256, (3, 40, 70), dtype=torch.uint8)
    scores = predict(model, image, eval_cfg, (128, 64), cfg.data.mean, cfg.data.std)
    assert scores.shape == (5, 40, 70)
    torch.testing.assert_close(scores.sum(0), torch.ones(40, 70))


def test_pixel_accuracy_counts_labelled_pixels_only():
    """mmseg acc_seg by hand: 2 of the 3 labelled pixels right (the ignored one is wrong and must not count)."""
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, :] = 1.0  # predicts class 1 in the top row, class 0 in the bottom row
    labels = torch.tensor([[[1, 0], [0, 255]]])
    assert pixel_accuracy(logits, labels).item() == pytest.approx(200 / 3)
    assert pixel_accuracy(logits, torch.full((1, 2, 2), 255)).item() == 0.0  # nothing labelled
