"""Layer-wise lr decay and weight-decay groups against hand re-statements of the official rules:
MAE util/lr_decay.py (`param_groups_lrd`, `get_layer_id_for_vit`) and detectron2 ViTDet `get_vit_lr_decay_rate`."""
import pytest
import torch.nn as nn

from maetransfer.models import SimpleFeaturePyramid, build_vit
from maetransfer.optim import param_groups


def _official_layer_id(name, num_layers):
    # mae/util/lr_decay.py get_layer_id_for_vit
    if name in ("cls_token", "pos_embed"):
        return 0
    if name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers


def _by_name(groups):
    out = {}
    for g in groups:
        for name in g["param_names"]:
            out[name] = (g["lr_scale"], g["weight_decay"])
    return out


@pytest.fixture(scope="module")
def vit_base():
    return build_vit("vit_base", global_pool="avg", num_classes=1000)


@pytest.mark.parametrize("layer_decay", [0.65, 0.75])
def test_vit_base_layer_decay_equals_official_param_groups_lrd(vit_base, layer_decay):
    model = vit_base
    no_wd = {"pos_embed", "cls_token", "dist_token"}  # the official model.no_weight_decay()
    num_layers = len(model.blocks) + 1
    got = _by_name(param_groups(model, 0.05, layer_decay))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(got) == sorted(names)
    for name, p in model.named_parameters():
        scale = layer_decay ** (num_layers - _official_layer_id(name, num_layers))
        wd = 0.0 if (p.ndim == 1 or name in no_wd) else 0.05
        assert got[name][0] == pytest.approx(scale, rel=1e-12), name
        assert got[name][1] == wd, name
    assert got["blocks.0.attn.qkv.weight"][0] == pytest.approx(layer_decay ** 12)
    assert got["patch_embed.proj.weight"][0] == pytest.approx(layer_decay ** 13)
    assert got["head.weight"] == (1.0, 0.05)


def test_detection_names_follow_vitdet_rule():
    """detectron2 get_vit_lr_decay_rate(name, rate, num_layers=depth): backbone pos/patch embed -> 0, blocks.i -> i+1,
    everything else depth+1; scale = rate ** (depth + 1 - layer_id)."""
    depth, rate = 4, 0.7

    def vitdet(name):
        layer = depth + 1
        if name.startswith("backbone"):
            if ".pos_embed" in name or ".patch_embed" in name:
                layer = 0
            elif ".blocks." in name and ".residual." not in name:
                layer = int(name[name.find(".blocks."):].split(".")[2]) + 1
        return rate ** (depth + 1 - layer)

    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.net = build_vit("vit_micro", img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2,
                                   class_token=False, window_size=2, rel_pos="decomposed")
    model.backbone.simfp = SimpleFeaturePyramid(32, 16)
    model.box_head = nn.Linear(16, 4)
    got = _by_name(param_groups(model, 0.1, rate))
    for name, _ in model.named_parameters():
        assert got[name][0] == pytest.approx(vitdet(name), rel=1e-12), name
    assert got["backbone.net.blocks.0.attn.rel_pos_h"][1] == 0.0  # default rule (detection: vitdet_no_weight_decay)
    assert got["backbone.net.pos_embed"][1] == 0.0
    assert got["backbone.simfp.simfp_2.0.weight"][1] == 0.1
