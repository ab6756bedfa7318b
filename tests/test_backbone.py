"""The ViT as a dense-prediction backbone: windowed attention against hand-computed attention, and loading an
encoder into the ViT inside a task model."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from maetransfer.checkpoint import load_into
from maetransfer.models import SimpleFeaturePyramid, build_vit

ARCH = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _vit(**kw):
    torch.manual_seed(0)
    return build_vit("vit_micro", **{**ARCH, **kw}).eval()


def _randomize_rel_pos(vit):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in vit.named_parameters():
            if "rel_pos" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def test_window_equal_to_the_grid_is_global_attention():
    for rel_pos in (None, "decomposed"):
        windowed = _vit(img_size=32, class_token=False, window_size=4, rel_pos=rel_pos)  # grid 4x4
        global_ = _vit(img_size=32, class_token=False, window_size=0, rel_pos=rel_pos)
        if rel_pos:
            _randomize_rel_pos(windowed)
        global_.load_state_dict(windowed.state_dict())
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            a = windowed.forward_maps(x, [0, 1])
            b = global_.forward_maps(x, [0, 1])
        for u, v in zip(a, b):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)


def _attention_by_hand(attn, tokens):
    """Softmax(q k^T / sqrt(d)) v per head, from the qkv and proj weights."""
    n, d = tokens.shape
    h = attn.num_heads
    q, k, v = (tokens @ attn.qkv.weight.t() + attn.qkv.bias).split(d, dim=-1)
    q, k, v = (t.reshape(n, h, d // h).transpose(0, 1) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d // h), dim=-1)
    return (weights @ v).transpose(0, 1).reshape(n, d) @ attn.proj.weight.t() + attn.proj.bias


def test_windowed_block_attends_within_each_window():
    vit = _vit(img_size=32, class_token=False, window_size=2, depth=1)  # 4x4 grid -> four 2x2 windows
    block = vit.blocks[0]
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        got = block(x, (4, 4))
        y = block.norm1(x)[0].reshape(4, 4, 32)
        attn_out = torch.zeros(4, 4, 32)
        for r in (0, 2):
            for c in (0, 2):
                win = y[r:r + 2, c:c + 2].reshape(4, 32)
                attn_out[r:r + 2, c:c + 2] = _attention_by_hand(block.attn, win).reshape(2, 2, 32)
        ref = x + attn_out.reshape(1, 16, 32)
        ref = ref + block.mlp(block.norm2(ref))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.net = _vit(img_size=64, class_token=False, window_size=2, global_blocks=(1,),
                                 rel_pos="decomposed")
        self.backbone.simfp = SimpleFeaturePyramid(32, 16)


def test_load_into_finds_the_vit_inside_a_task_model():
    src = _vit(img_size=32)
    det = _Detector()
    report = load_into(det, src.state_dict(), verbose=False)
    assert torch.equal(det.backbone.net.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    assert "cls_token" in report.unexpected
    assert sorted(report.missing) == sorted(f"blocks.{i}.attn.rel_pos_{a}" for i in range(2) for a in "hw")
    # the 4x4 table reached the 8x8 grid of the 64-px detector input, as bicubic F.interpolate computes it
    grid = src.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 64, 32)
    torch.testing.assert_close(det.backbone.net.pos_embed[:, 1:], ref)
