"""Feature pyramids: shapes, strides, and parameter names equal to detectron2 ViTDet / mmseg Feature2Pyramid."""
import pytest
import torch
import torch.nn.functional as F

from maetransfer.models import MultiLevelPyramid, SimpleFeaturePyramid, build_vit, vit_out_indices


def _detectron2_simfp_keys(d, c):
    """detectron2 SimpleFeaturePyramid(scale_factors=(4, 2, 1, .5), norm='LN') state-dict keys and shapes, written out
    from detectron2/modeling/backbone/vit.py: nn.Sequential stages named simfp_{log2 stride}; detectron2 Conv2d keeps
    its norm as `.norm`; LayerNorm has weight/bias; GELU and MaxPool have no parameters."""
    conv = lambda i, cin: {f"{i}.weight": (c, cin, 1, 1), f"{i}.norm.weight": (c,), f"{i}.norm.bias": (c,)}  # noqa
    conv3 = lambda i: {f"{i}.weight": (c, c, 3, 3), f"{i}.norm.weight": (c,), f"{i}.norm.bias": (c,)}  # noqa
    stages = {
        "simfp_2": {"0.weight": (d, d // 2, 2, 2), "0.bias": (d // 2,), "1.weight": (d // 2,), "1.bias": (d // 2,),
                    "3.weight": (d // 2, d // 4, 2, 2), "3.bias": (d // 4,), **conv(4, d // 4), **conv3(5)},
        "simfp_3": {"0.weight": (d, d // 2, 2, 2), "0.bias": (d // 2,), **conv(1, d // 2), **conv3(2)},
        "simfp_4": {**conv(0, d), **conv3(1)},
        "simfp_5": {**conv(1, d), **conv3(2)},
    }
    return {f"{s}.{k}": v for s, keys in stages.items() for k, v in keys.items()}


def test_simple_feature_pyramid_matches_detectron2_names_and_shapes():
    fpn = SimpleFeaturePyramid(64, out_channels=32)
    ours = {k: tuple(v.shape) for k, v in fpn.state_dict().items()}
    assert ours == _detectron2_simfp_keys(64, 32)


def test_simple_feature_pyramid_outputs_and_strides():
    fpn = SimpleFeaturePyramid(64, out_channels=32)
    x = torch.randn(2, 64, 6, 8)  # stride-16 map of a 96 x 128 image
    out = fpn(x)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert dict(fpn.strides) == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for name, stride in fpn.strides.items():
        assert out[name].shape == (2, 32, -(-96 // stride), -(-128 // stride)), name
    assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])  # LastLevelMaxPool: kernel 1, stride 2
    assert list(SimpleFeaturePyramid(64, top_block=False)(x)) == ["p2", "p3", "p4", "p5"]


def test_layernorm_is_channels_first_like_detectron2():
    fpn = SimpleFeaturePyramid(16, out_channels=8).eval()
    ln = fpn.simfp_4[0].norm
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-1, 1)
    x = torch.randn(2, 8, 5, 5)
    u = x.mean(1, keepdim=True)  # detectron2.layers.LayerNorm, eps 1e-6
    s = (x - u).pow(2).mean(1, keepdim=True)
    ref = ln.weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + ln.bias[:, None, None]
    torch.testing.assert_close(ln(x), ref, atol=1e-5, rtol=1e-5)


def test_simple_feature_pyramid_one_by_one_stage_is_conv_then_conv():
    fpn = SimpleFeaturePyramid(16, out_channels=8, norm="").eval()
    x = torch.randn(1, 16, 4, 4)
    st = fpn.simfp_4
    ref = F.conv2d(F.conv2d(x, st[0].weight, st[0].bias), st[1].weight, st[1].bias, padding=1)
    torch.testing.assert_close(fpn(x)["p4"], ref)


@pytest.mark.parametrize("norm", ["BN", "GN", "LN"])
def test_multi_level_pyramid_matches_mmseg_feature2pyramid(norm):
    neck = MultiLevelPyramid(64, norm=norm).eval()
    keys = {k for k in neck.state_dict() if "running" not in k and "num_batches" not in k}
    # mmseg necks/featurepyramid.py: upsample_4x = [ConvT, norm, GELU, ConvT], upsample_2x = [ConvT]
    assert keys == {"upsample_4x.0.weight", "upsample_4x.0.bias", "upsample_4x.1.weight", "upsample_4x.1.bias",
                    "upsample_4x.3.weight", "upsample_4x.3.bias", "upsample_2x.0.weight", "upsample_2x.0.bias"}
    assert neck.upsample_4x[0].weight.shape == (64, 64, 2, 2)
    maps = [torch.randn(2, 64, 4, 6) for _ in range(4)]
    outs = neck(maps)
    assert [o.shape[-2:] for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert all(o.shape[1] == 64 for o in outs)
    assert neck.strides == [4, 8, 16, 32]
    assert outs[2] is maps[2]
    torch.testing.assert_close(outs[3], F.max_pool2d(maps[3], 2))


def test_vit_out_indices_and_backbone_maps():
    assert vit_out_indices(12) == [2, 5, 8, 11]
    assert vit_out_indices(24) == [5, 11, 17, 23]
    assert vit_out_indices(32) == [7, 15, 23, 31]
    vit = build_vit("vit_micro", img_size=64).eval()
    maps = vit.forward_maps(torch.randn(1, 3, 64, 96), vit_out_indices(vit.depth))
    outs = MultiLevelPyramid(vit.embed_dim, norm="GN").eval()(maps)
    assert [tuple(o.shape[-2:]) for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="scale factor 3"):
        SimpleFeaturePyramid(64, scale_factors=(3.0,))
    with pytest.raises(ValueError, match="unknown norm"):
        SimpleFeaturePyramid(64, norm="XN")
    with pytest.raises(ValueError, match="expects 4 maps"):
        MultiLevelPyramid(64)([torch.randn(1, 64, 2, 2)])
