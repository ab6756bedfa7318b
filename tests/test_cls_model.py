"""Classifier modes: parameter layout against timm / the official linear-probe hack, frozen parts, head init."""
from functools import partial

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from timm.models.vision_transformer import VisionTransformer as TimmViT

from maetransfer.cls.model import build_classifier
from maetransfer.optim import build_optimizer, param_groups

ARCH = dict(arch="vit_micro", patch_size=8, embed_dim=32, depth=4, num_heads=2)


def _cfg(mode="finetune", global_pool="avg", partial_blocks=0, drop_path=0.0):
    return OmegaConf.create(dict(mode=mode, global_pool=global_pool, partial_blocks=partial_blocks,
                                 drop_path_rate=drop_path, grad_checkpointing=False, **ARCH))


def _timm(num_classes, global_pool):
    """The official models_vit.VisionTransformer is timm's with fc_norm for global pooling (norm removed)."""
    return TimmViT(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=num_classes,
                   global_pool=global_pool, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))


def _shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("global_pool", ["avg", "token"])
def test_finetune_classifier_equals_timm(global_pool):
    ours = build_classifier(_cfg(global_pool=global_pool), num_classes=7, img_size=32).eval()
    ref = _timm(7, global_pool).eval()
    assert _shapes(ours) == _shapes(ref)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
    assert all(p.requires_grad for n, p in ours.named_parameters())


def test_linear_probe_head_has_official_key_names_and_only_it_trains():
    ours = build_classifier(_cfg("linear", "token"), num_classes=5, img_size=32)
    ref = _timm(5, "token")  # main_linprobe.py: model.head = Sequential(BatchNorm1d(affine=False, eps=1e-6), head)
    ref.head = nn.Sequential(nn.BatchNorm1d(ref.head.in_features, affine=False, eps=1e-6), ref.head)
    assert _shapes(ours) == _shapes(ref)
    assert {"head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked", "head.1.weight",
            "head.1.bias"} <= set(ours.state_dict())
    bn = ours.head[0]
    assert isinstance(bn, nn.BatchNorm1d) and not bn.affine and bn.eps == 1e-6
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == ["head.1.weight", "head.1.bias"]


def test_linear_probe_step_changes_only_the_head():
    model = build_classifier(_cfg("linear", "token"), num_classes=4, img_size=32)
    train = OmegaConf.create(dict(optimizer="lars", momentum=0.9, weight_decay=0.0, betas=[0.9, 0.999]))
    opt = build_optimizer(train, param_groups(model, 0.0))
    for g in opt.param_groups:
        g["lr"] = 0.1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.arange(8) % 4)
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["head.0.num_batches_tracked", "head.0.running_mean", "head.0.running_var", "head.1.bias",
                       "head.1.weight"]


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_partial_finetune_trains_the_last_k_blocks_norm_and_head(k):
    model = build_classifier(_cfg("partial", partial_blocks=k), num_classes=3, img_size=32)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("fc_norm.", "head.")) or any(n.startswith(f"blocks.{i}.") for i in range(4 - k, 4))}
    assert trainable == expected
    assert ("blocks.3.attn.qkv.weight" in trainable) == (k > 0)
    assert "patch_embed.proj.weight" not in trainable and "pos_embed" not in trainable


@pytest.mark.parametrize("mode, k", [("partial", 1), ("partial", 0), ("linear", 0)])
def test_frozen_blocks_run_without_drop_path(mode, k):
    """In training mode the frozen blocks give the tokens of evaluation mode (no stochastic depth there), while a
    block that trains keeps its drop path and perturbs its output."""
    torch.manual_seed(0)
    model = build_classifier(_cfg(mode, "token", partial_blocks=k, drop_path=0.5), num_classes=3, img_size=32)
    x = torch.randn(4, 3, 32, 32)
    frozen = model.depth - k if mode == "partial" else model.depth

    def tokens(blocks):
        t, grid = model.embed_patches(x)
        t = model.prepend_cls(t, model.pos_embed_for(grid))
        for block in blocks:
            t = block(t, grid)
        return t

    with torch.no_grad():
        model.eval()
        reference = tokens(model.blocks[:frozen]), tokens(model.blocks)  # evaluation mode never drops a path
        model.train()
        assert torch.equal(tokens(model.blocks[:frozen]), reference[0])
        if frozen < model.depth:
            assert not torch.equal(tokens(model.blocks), reference[1])


def test_partial_blocks_out_of_range():
    with pytest.raises(ValueError, match="partial_blocks=5"):
        build_classifier(_cfg("partial", partial_blocks=5), num_classes=3, img_size=32)


def test_head_initialisation():
    torch.manual_seed(0)
    ft = build_classifier(_cfg(), num_classes=1000, img_size=32)  # 32k weights: std is well estimated
    assert abs(ft.head.weight.std().item() / 2e-5 - 1) < 0.05 and torch.count_nonzero(ft.head.bias) == 0
    lin = build_classifier(_cfg("linear", "token"), num_classes=1000, img_size=32)
    assert abs(lin.head[1].weight.std().item() / 0.01 - 1) < 0.05  # main_linprobe: trunc_normal std 0.01
