"""MAE model: official layout, masking, loss, position embeddings, samplers (hand-computed references)."""
import math

import numpy as np
import pytest
import torch

from maetransfer.models.pos_embed import sincos_2d
from pretrain.masking import block_mask, grid_keep, mask_noise
from pretrain.models_mae import MaskedAutoencoderViT, mae_vit_base_patch16, patchify, unpatchify
from pretrain.visualize import HEADER, PADDING, figure_layout, preview_indices


def tiny_mae(**kw):
    args = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, decoder_embed_dim=32,
                decoder_depth=2, decoder_num_heads=4)
    return MaskedAutoencoderViT(**{**args, **kw})


def official_keys(depth: int, decoder_depth: int) -> set:
    """The key list of the official MaskedAutoencoderViT (models_mae.py), written out by hand."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias", "decoder_norm.weight",
            "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    keys |= {f"blocks.{i}.{k}" for i in range(depth) for k in block}
    keys |= {f"decoder_blocks.{i}.{k}" for i in range(decoder_depth) for k in block}
    return keys


def test_vit_base_state_dict_equals_official_layout():
    model = mae_vit_base_patch16(norm_pix_loss=True)
    sd = model.state_dict()
    assert set(sd) == official_keys(12, 8)
    assert sd["pos_embed"].shape == (1, 197, 768) and sd["decoder_pos_embed"].shape == (1, 197, 512)
    assert sd["blocks.0.attn.qkv.weight"].shape == (2304, 768)
    assert sd["decoder_pred.weight"].shape == (768, 512)  # 16 * 16 * 3 pixels per patch
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert set(model.encoder_state_dict()) == {k for k in sd if not k.startswith(("decoder_", "mask_token"))}


def test_sincos_matches_hand_computation():
    emb = sincos_2d(8, (2, 3), cls_token=True)[0]  # D=8: per axis 4 channels, omega = [1, 1/100]
    assert torch.equal(emb[0], torch.zeros(8))
    row, col = 1, 2
    expected = [math.sin(col), math.sin(col / 100), math.cos(col), math.cos(col / 100),
                math.sin(row), math.sin(row / 100), math.cos(row), math.cos(row / 100)]
    torch.testing.assert_close(emb[1 + row * 3 + col], torch.tensor(expected), atol=1e-6, rtol=0)


def test_patchify_is_channel_last_and_round_trips():
    imgs = torch.randn(2, 3, 16, 24)
    patches = patchify(imgs, 8)
    assert patches.shape == (2, 6, 192)
    # patch (row 1, col 2) is pixels [8:16, 16:24], laid out (p, q, c)
    torch.testing.assert_close(patches[:, 1 * 3 + 2], imgs[:, :, 8:16, 16:24].permute(0, 2, 3, 1).reshape(2, -1))
    assert torch.equal(unpatchify(patches, 8, (2, 3)), imgs)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_visible_patch_count_and_mask(ratio):
    model = tiny_mae().eval()
    imgs = torch.randn(3, 3, 32, 32)
    latent, mask, ids_restore, _ = model.forward_encoder(imgs, ratio)
    keep = int(16 * (1 - ratio))
    assert latent.shape == (3, 1 + keep, 64)
    assert torch.equal(mask.sum(1), torch.full((3,), 16.0 - keep))
    assert torch.equal(torch.sort(ids_restore, 1).values, torch.arange(16).expand(3, -1))


def test_noise_fixes_the_mask_and_small_noise_is_kept():
    model = tiny_mae().eval()
    imgs = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    out1, out2 = model(imgs, 0.75, noise), model(imgs, 0.75, noise)
    assert torch.equal(out1[2], out2[2]) and torch.equal(out1[0], out2[0])
    kept = torch.argsort(noise, 1)[:, :4]
    assert torch.all(torch.gather(out1[2], 1, kept) == 0)


def test_loss_counts_removed_patches_only_with_norm_pix_targets():
    model = tiny_mae(norm_pix_loss=True).eval()
    imgs = torch.randn(2, 3, 32, 32)
    loss, pred, mask = model(imgs, 0.75)
    # hand computation: unbiased per-patch variance, eps 1e-6, mean over removed patches
    target = patchify(imgs, 8)
    target = (target - target.mean(-1, keepdim=True)) / torch.sqrt(target.var(-1, unbiased=True, keepdim=True) + 1e-6)
    per_patch = ((pred - target) ** 2).mean(-1)
    torch.testing.assert_close(loss, per_patch[mask.bool()].mean())
    changed = pred + (1 - mask).unsqueeze(-1) * 100.0  # corrupt predictions of visible patches only
    torch.testing.assert_close(model.forward_loss(imgs, changed, mask), loss)


def test_non_square_images():
    model = tiny_mae(img_size=(32, 48))
    loss, pred, mask = model(torch.randn(2, 3, 32, 48), 0.75)
    assert pred.shape == (2, 24, 192) and mask.shape == (2, 24) and torch.isfinite(loss)
    torch.testing.assert_close(model.pos_embed, sincos_2d(64, (4, 6), cls_token=True))


def test_grid_sampler_keeps_one_patch_per_cell():
    removed = grid_keep((4, 4), 0.75).view(4, 4)
    kept = (~removed).nonzero().tolist()
    assert kept == [[0, 0], [0, 2], [2, 0], [2, 2]]
    model = tiny_mae(mask_sampler="grid")
    _, _, mask = model(torch.randn(2, 3, 32, 32))
    assert torch.equal(mask[0].bool(), removed.flatten())
    with pytest.raises(ValueError, match="grid masking"):
        grid_keep((4, 4), 0.6)


def test_block_sampler_masks_exactly_and_in_blocks():
    torch.manual_seed(0)
    m = block_mask((14, 14), 98, min_patches=16)
    assert int(m.sum()) == 98
    grid = m.view(14, 14).float()
    # blocks: most masked patches have a masked 4-neighbour (random masking at 50% gives ~75%, blocks ~ all)
    neighbours = torch.zeros_like(grid)
    neighbours[1:] += grid[:-1]
    neighbours[:-1] += grid[1:]
    neighbours[:, 1:] += grid[:, :-1]
    neighbours[:, :-1] += grid[:, 1:]
    assert ((neighbours > 0) & (grid > 0)).sum() / grid.sum() > 0.9
    noise = mask_noise("block", 3, (4, 4), 0.75, "cpu")
    assert noise.shape == (3, 16)


def test_mask_tokens_in_encoder_ablation():
    model = tiny_mae(mask_tokens_in_encoder=True).eval()
    latent, mask, ids_restore, grid = model.forward_encoder(torch.randn(2, 3, 32, 32), 0.75)
    assert latent.shape == (2, 17, 64)  # every patch goes through the encoder
    loss, pred, mask = model(torch.randn(2, 3, 32, 32))
    assert pred.shape == (2, 16, 192) and int(mask.sum()) == 2 * 12
    assert "encoder_mask_token" not in model.encoder_state_dict()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_prediction_and_mask_equal_hugging_face(tmp_path, norm_pix):
    """Our MAE, converted with tools' HF writer and loaded by transformers, gives the same loss/pred/mask."""
    transformers = pytest.importorskip("transformers")
    from maetransfer.checkpoint import parse_state, save_hf

    ours = tiny_mae(norm_pix_loss=norm_pix).eval()
    save_hf(parse_state({"model": ours.state_dict()}), tmp_path / "hf", num_heads=4, decoder_num_heads=4)
    hf = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf", norm_pix_loss=norm_pix).eval()
    assert hf.config.layer_norm_eps == 1e-6
    imgs, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        loss, pred, mask = ours(imgs, 0.75, noise)
        out = hf(pixel_values=imgs, noise=noise)
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pred, out.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(mask, out.mask)


def test_visualize_tool_on_an_official_full_layout_file(tmp_path):
    from PIL import Image

    from tools.visualize_mae import main

    model = tiny_mae()
    torch.save({"model": model.state_dict()}, tmp_path / "mae_full.pth")  # the released `_full` layout
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    main([str(tmp_path / "mae_full.pth"), str(tmp_path / "red.png"), str(tmp_path / "red.png"),
          "--output", str(tmp_path / "recon.png"), "--num-heads", "4", "--decoder-num-heads", "4"])
    figure = Image.open(tmp_path / "recon.png").convert("RGB")
    factor, tile = figure_layout(32)
    assert factor == 6 and tile == 192  # 32 px panels enlarged 6x
    assert figure.size == (4 * tile + 5 * PADDING, HEADER + 2 * tile + 3 * PADDING)  # 4 panels, 2 images
    header = np.asarray(figure.crop((0, 0, figure.size[0], HEADER)).convert("L"))
    for column in range(4):  # a label above every column
        assert (header[:, PADDING + column * (tile + PADDING):(column + 1) * (tile + PADDING)] < 128).any()
    # panel 4 pastes the visible patches of the original back: 25% of the patches are exactly the input red
    left, top = PADDING + 3 * (tile + PADDING), HEADER + PADDING
    panel = np.asarray(figure.crop((left, top, left + tile, top + tile)))[::factor, ::factor]  # back to 32 px
    is_red = torch.from_numpy((panel == [200, 30, 30]).all(-1)).view(4, 8, 4, 8)  # (patch row, y, patch col, x)
    red_patches = is_red.permute(0, 2, 1, 3).reshape(16, 64).all(-1).sum()
    assert int(red_patches) == 4


def test_preview_images_are_spread_over_the_classes():
    from pathlib import Path

    folder_tree = [Path(f"train/class{c:03d}/{i}.jpg") for c in range(100) for i in range(50)]
    picked = preview_indices(folder_tree, 8)
    assert len({folder_tree[i].parent for i in picked}) == 8  # not the first 8 images (all of class000)
    assert picked[0] == 0 and picked[-1] == 99 * 50  # first and last class
    few_classes = [Path(f"c{c}/{i}.jpg") for c in range(3) for i in range(10)]
    picked = preview_indices(few_classes, 8)
    assert len(set(picked)) == 8 and {few_classes[i].parent.name for i in picked} == {"c0", "c1", "c2"}
    flat = [Path(f"scene_{i:05d}.jpg") for i in range(2000)]
    assert preview_indices(flat, 5) == [0, 500, 1000, 1499, 1999]
    assert preview_indices(flat[:3], 8) == [0, 1, 2]


def test_pretraining_continues_from_a_hugging_face_vitmae_folder(tmp_path, capsys):
    """train.init_checkpoint for pretraining: encoder and decoder come from the file (here written by transformers'
    own save_pretrained), the fixed sin-cos tables stay this model's; an encoder-only file keeps a fresh decoder."""
    transformers = pytest.importorskip("transformers")
    from maetransfer.checkpoint import CheckpointError, parse_state, save_hf
    from pretrain.main import load_init

    source = tiny_mae()
    save_hf(parse_state({"model": source.state_dict()}), tmp_path / "conv", num_heads=4, decoder_num_heads=4)
    transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "conv").save_pretrained(tmp_path / "hf")
    torch.manual_seed(1)
    model = tiny_mae()
    load_init(model, str(tmp_path / "hf"))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)

    torch.save({"model": source.encoder_state_dict()}, tmp_path / "encoder.pth")
    fresh = tiny_mae()
    before = fresh.decoder_embed.weight.clone()
    load_init(fresh, str(tmp_path / "encoder.pth"))
    assert torch.equal(fresh.decoder_embed.weight, before) and torch.equal(fresh.blocks[0].mlp.fc1.weight,
                                                                            source.blocks[0].mlp.fc1.weight)
    assert "MAE decoder (the source has none; random init)" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match=r"hf: \S+ has shape .* but the model expects"):
        load_init(tiny_mae(decoder_embed_dim=48), str(tmp_path / "hf"))
