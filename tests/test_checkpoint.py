"""Checkpoint reading/conversion, checked against independent implementations (timm, transformers ViTMAE) and against
key layouts written out by hand from the reference converters (beit2mmseg, detectron2 ViTDet, HF conversion)."""
import argparse
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer as TimmViT

from maetransfer.checkpoint import (CheckpointError, LoadedCheckpoint, load_encoder_state, load_into, parse_state,
                                    read_checkpoint, convert_checkpoint)
from maetransfer.models import build_vit
from tool_modules import load_tool

D, DEPTH, HEADS, PATCH, IMG = 32, 2, 2, 8, 32
DEC_D, DEC_HEADS = 16, 2
ROOT = Path(__file__).resolve().parent.parent


def _randomize(module: nn.Module, seed: int):
    """Random values everywhere (norm weights and pos_embed too) so that any mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == D else 0.0))


def _timm_encoder(seed=0, **kw) -> TimmViT:
    vit = TimmViT(img_size=IMG, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=0,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6), **kw)
    _randomize(vit, seed)
    return vit.eval()


def _official_decoder(seed=1) -> nn.Module:
    """The official MAE decoder parameter layout (models_mae.py) built from timm blocks."""
    dec = nn.Module()
    dec.mask_token = nn.Parameter(torch.zeros(1, 1, DEC_D))
    dec.decoder_pos_embed = nn.Parameter(torch.zeros(1, (IMG // PATCH) ** 2 + 1, DEC_D))
    dec.decoder_embed = nn.Linear(D, DEC_D)
    dec.decoder_blocks = nn.ModuleList([TimmBlock(DEC_D, DEC_HEADS, qkv_bias=True) for _ in range(2)])
    dec.decoder_norm = nn.LayerNorm(DEC_D)
    dec.decoder_pred = nn.Linear(DEC_D, PATCH * PATCH * 3)
    _randomize(dec, seed)
    return dec


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official `_full`-style training checkpoint: encoder + decoder, optimizer state and argparse args."""
    root = tmp_path_factory.mktemp("official")
    enc, dec = _timm_encoder(), _official_decoder()
    path = root / "mae_full.pth"
    torch.save({"model": {**enc.state_dict(), **dec.state_dict()}, "optimizer": {"state": {}, "param_groups": []},
                "epoch": 3, "args": argparse.Namespace(model="mae_vit_tiny_patch8", lr=1e-3, output_dir="out")},
               path)
    return path, enc, dec


def _ours(**kw):
    return build_vit("vit_micro", **{**dict(img_size=IMG, patch_size=PATCH, embed_dim=D, depth=DEPTH,
                                            num_heads=HEADS), **kw})


def _assert_same(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- format detection and parity with independent implementations ----------------------------------------------
def test_official_file_with_args_loads_with_weights_only(official):
    path, enc, dec = official
    ck = read_checkpoint(path)
    assert ck.format == "mae"
    _assert_same(ck.encoder, enc.state_dict())
    _assert_same(ck.decoder, dec.state_dict())
    assert ck.head == {} and ck.other == {}
    _assert_same(load_encoder_state(path), enc.state_dict())


def test_our_backbone_equals_timm_with_official_weights(official, capsys):
    path, enc, _ = official
    ours = _ours().eval()
    report = load_into(ours, read_checkpoint(path))
    assert report.missing == [] and report.unexpected == []
    assert "ignored the MAE decoder" in capsys.readouterr().out
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_features(x), enc.forward_features(x), atol=1e-5, rtol=1e-5)


def test_hf_export_matches_transformers_vitmae(official, tmp_path):
    transformers = pytest.importorskip("transformers")
    path, enc, dec = official
    out = tmp_path / "hf"
    convert_checkpoint(read_checkpoint(path), out, "hf", num_heads=HEADS, decoder_num_heads=DEC_HEADS)
    model = transformers.ViTMAEModel.from_pretrained(out, mask_ratio=0.0).eval()
    assert model.config.layer_norm_eps == 1e-6 and model.config.num_attention_heads == HEADS
    x = torch.randn(2, 3, IMG, IMG)
    n = (IMG // PATCH) ** 2
    with torch.no_grad():
        # mask_ratio 0 keeps every patch; ascending noise keeps them in their original order
        hf = model(pixel_values=x, noise=torch.arange(n, dtype=torch.float).expand(2, n)).last_hidden_state
        torch.testing.assert_close(hf, enc.forward_features(x), atol=1e-5, rtol=1e-5)
    pre = transformers.ViTMAEForPreTraining.from_pretrained(out)
    back = parse_state(pre.state_dict(), "ViTMAEForPreTraining")
    _assert_same(back.encoder, enc.state_dict())
    _assert_same(back.decoder, dec.state_dict())


def test_our_mae_training_checkpoint_equals_hf_vitmae_pretraining(tmp_path):
    """pretrain/ MAE -> our training checkpoint -> HF folder: ViTMAEForPreTraining gives the same loss, prediction
    and mask for the same noise (decoder and norm-pix target included)."""
    transformers = pytest.importorskip("transformers")
    from pretrain.models_mae import build_mae
    torch.manual_seed(0)
    mae = build_mae("vit_micro", img_size=IMG, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                    decoder_embed_dim=DEC_D, decoder_depth=1, decoder_num_heads=DEC_HEADS, norm_pix_loss=True).eval()
    _randomize(mae, 10)
    config = {"model": {"arch": "vit_micro", "num_heads": HEADS, "decoder_num_heads": DEC_HEADS,
                        "norm_pix_loss": True, "mask_ratio": 0.75}}
    torch.save({"model": mae.state_dict(), "optimizer": {}, "epoch": 1, "config": config}, tmp_path / "ckpt.pth")
    ck = read_checkpoint(tmp_path / "ckpt.pth")
    assert ck.format == "maetransfer" and ck.other == {}
    convert_checkpoint(ck, tmp_path / "hf", "hf")
    hf = transformers.ViTMAEForPreTraining.from_pretrained(tmp_path / "hf").eval()
    x, noise = torch.randn(2, 3, IMG, IMG), torch.rand(2, (IMG // PATCH) ** 2)
    with torch.no_grad():
        loss, pred, mask = mae(x, 0.75, noise=noise)
        out = hf(pixel_values=x, noise=noise)
    assert torch.equal(mask, out.mask)
    torch.testing.assert_close(pred, out.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=1e-5)


def test_hf_to_ours_to_hf_is_bit_exact(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTMAEConfig(hidden_size=D, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                    intermediate_size=4 * D, image_size=IMG, patch_size=PATCH, decoder_hidden_size=24,
                                    decoder_num_hidden_layers=1, decoder_num_attention_heads=3,
                                    decoder_intermediate_size=48, layer_norm_eps=1e-6)
    torch.manual_seed(0)
    src = transformers.ViTMAEForPreTraining(cfg)
    src.save_pretrained(tmp_path / "src")
    ck = read_checkpoint(tmp_path / "src")
    assert ck.format == "hf" and ck.meta["num_heads"] == HEADS and ck.meta["decoder_num_heads"] == 3
    convert_checkpoint(ck, tmp_path / "dst", "hf")
    from safetensors.torch import load_file
    _assert_same(load_file(tmp_path / "dst" / "model.safetensors"), load_file(tmp_path / "src" / "model.safetensors"))


def test_hf_transformers4_naming_is_read():
    """Old (transformers 4, hub files) names, written out from modeling_vit_mae.py of transformers 4."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    q, k, v, qb, kb, vb = r(D, D), r(D, D), r(D, D), r(D), r(D), r(D)
    L = "vit.encoder.layer.0."
    sd = {"vit.embeddings.cls_token": r(1, 1, D), "vit.embeddings.position_embeddings": r(1, 17, D),
          "vit.embeddings.patch_embeddings.projection.weight": r(D, 3, PATCH, PATCH),
          "vit.embeddings.patch_embeddings.projection.bias": r(D),
          L + "attention.attention.query.weight": q, L + "attention.attention.query.bias": qb,
          L + "attention.attention.key.weight": k, L + "attention.attention.key.bias": kb,
          L + "attention.attention.value.weight": v, L + "attention.attention.value.bias": vb,
          L + "attention.output.dense.weight": r(D, D), L + "attention.output.dense.bias": r(D),
          L + "intermediate.dense.weight": r(4 * D, D), L + "intermediate.dense.bias": r(4 * D),
          L + "output.dense.weight": r(D, 4 * D), L + "output.dense.bias": r(D),
          L + "layernorm_before.weight": r(D), L + "layernorm_before.bias": r(D),
          L + "layernorm_after.weight": r(D), L + "layernorm_after.bias": r(D),
          "vit.layernorm.weight": r(D), "vit.layernorm.bias": r(D)}
    ck = parse_state(sd)
    enc = ck.encoder
    assert ck.format == "hf" and ck.other == {}
    assert torch.equal(enc["blocks.0.attn.qkv.weight"], torch.cat([q, k, v]))
    assert torch.equal(enc["blocks.0.attn.qkv.bias"], torch.cat([qb, kb, vb]))
    assert torch.equal(enc["blocks.0.attn.proj.weight"], sd[L + "attention.output.dense.weight"])
    assert torch.equal(enc["blocks.0.mlp.fc1.weight"], sd[L + "intermediate.dense.weight"])
    assert torch.equal(enc["blocks.0.mlp.fc2.weight"], sd[L + "output.dense.weight"])
    assert torch.equal(enc["blocks.0.norm1.weight"], sd[L + "layernorm_before.weight"])
    assert torch.equal(enc["norm.bias"], sd["vit.layernorm.bias"])
    assert torch.equal(enc["pos_embed"], sd["vit.embeddings.position_embeddings"])
    assert len(enc) == 4 + 12 + 2  # embeddings, one block, final norm


# --- every converter round trip ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["mae", "timm", "hf", "detectron2", "mmseg"])
def test_round_trip_is_bit_exact(official, tmp_path, fmt):
    if fmt == "hf":
        pytest.importorskip("transformers")
    path, enc, dec = official
    src = read_checkpoint(path)
    src.head = {"fc_norm.weight": torch.randn(D), "fc_norm.bias": torch.randn(D), "head.weight": torch.randn(5, D),
                "head.bias": torch.randn(5)}
    out = convert_checkpoint(src, tmp_path / f"out_{fmt}", fmt, num_heads=HEADS, decoder_num_heads=DEC_HEADS)
    back = read_checkpoint(out)
    assert back.format == fmt
    encoder = dict(src.encoder)
    if fmt == "detectron2":  # ViTDet keeps neither
        del encoder["cls_token"], encoder["norm.weight"], encoder["norm.bias"]
    _assert_same(back.encoder, encoder)
    _assert_same(back.decoder, src.decoder if fmt in ("mae", "hf") else {})
    _assert_same(back.head, src.head if fmt in ("mae", "timm") else {})


def test_timm_export_loads_strictly_into_timm(official, tmp_path):
    path, enc, _ = official
    out = convert_checkpoint(read_checkpoint(path), tmp_path / "timm.pth", "timm")
    fresh = TimmViT(img_size=IMG, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=0)
    fresh.load_state_dict(torch.load(out, weights_only=True), strict=True)


def test_detectron2_layout_with_pyramid_and_rel_pos(tmp_path):
    """ViTDet layout (detectron2 vit.py): backbone.net.* incl. rel_pos_h/w, no cls_token/norm, pos_embed with its cls
    row, pyramid backbone.simfp_*; a detectron2 training file is read back and re-exported unchanged."""
    from maetransfer.models import SimpleFeaturePyramid
    vit = _ours(class_token=False, window_size=2, global_blocks=(1,), rel_pos="decomposed")
    fpn = SimpleFeaturePyramid(D, out_channels=16)
    _randomize(vit, 3)
    _randomize(fpn, 4)
    d2 = {"model": {**{f"backbone.net.{k}": v for k, v in vit.state_dict().items() if not k.startswith("norm.")},
                    **{f"backbone.{k}": v for k, v in fpn.state_dict().items()},
                    "roi_heads.box_predictor.cls_score.weight": torch.randn(81, 16)},
          "iteration": 10}
    torch.save(d2, tmp_path / "model_final.pth")
    ck = read_checkpoint(tmp_path / "model_final.pth")
    assert ck.format == "detectron2"
    assert "blocks.0.attn.rel_pos_h" in ck.encoder and ck.encoder["blocks.0.attn.rel_pos_h"].shape == (3, D // HEADS)
    assert ck.encoder["blocks.1.attn.rel_pos_h"].shape == (7, D // HEADS)  # global block: 2 * grid - 1
    assert ck.encoder["pos_embed"].shape == (1, 17, D)
    _assert_same(ck.neck, fpn.state_dict())
    assert list(ck.other) == ["roi_heads.box_predictor.cls_score.weight"]
    out = torch.load(convert_checkpoint(ck, tmp_path / "re.pth", "detectron2"), weights_only=True)["model"]
    expected = {k: v for k, v in d2["model"].items() if not k.startswith("roi_heads")}
    _assert_same(out, expected)
    target = _ours(class_token=False, window_size=2, global_blocks=(1,), rel_pos="decomposed")
    load_into(target, ck, verbose=False)
    fpn2 = SimpleFeaturePyramid(D, out_channels=16)
    fpn2.load_state_dict(ck.neck)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        ref = fpn.eval()(vit.eval().forward_maps(x, [DEPTH - 1])[0])
        got = fpn2.eval()(target.eval().forward_maps(x, [DEPTH - 1])[0])
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])


def test_mmseg_layout_matches_beit2mmseg(tmp_path):
    """Key names of mmseg's converter (tools/model_converters/beit2mmseg.py) and MAE backbone (layer scale
    gamma_1/2, relative_position_bias_table), written out by hand."""
    vit = _ours(rel_pos="bias", layer_scale_init=1.0)
    _randomize(vit, 5)
    torch.save({"model": vit.state_dict(), "config": {"model": {"num_heads": HEADS}}}, tmp_path / "ours.pth")
    ck = read_checkpoint(tmp_path / "ours.pth")
    assert ck.format == "maetransfer" and ck.meta["num_heads"] == HEADS
    out = torch.load(convert_checkpoint(ck, tmp_path / "mmseg.pth", "mmseg"), weights_only=True)["state_dict"]
    per_layer = ["ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                 "attn.relative_position_bias_table", "ln2.weight", "ln2.bias", "ffn.layers.0.0.weight",
                 "ffn.layers.0.0.bias", "ffn.layers.1.weight", "ffn.layers.1.bias", "gamma_1", "gamma_2"]
    expected = {"backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.projection.weight",
                "backbone.patch_embed.projection.bias", "backbone.norm.weight", "backbone.norm.bias"}
    expected |= {f"backbone.layers.{i}.{k}" for i in range(DEPTH) for k in per_layer}
    assert set(out) == expected
    assert torch.equal(out["backbone.layers.1.gamma_2"], vit.blocks[1].ls2.gamma)
    assert torch.equal(out["backbone.layers.0.ffn.layers.1.weight"], vit.blocks[0].mlp.fc2.weight)
    back = read_checkpoint(tmp_path / "mmseg.pth")
    _assert_same(back.encoder, vit.state_dict())


def test_mmseg_beit_qv_bias_is_fused():
    """BEiT attention (mmseg beit.py) has a bias-free qkv plus q_bias and v_bias: k's bias is zero."""
    qkv_w, qb, vb = torch.randn(3 * D, D), torch.randn(D), torch.randn(D)
    sd = {"backbone.patch_embed.projection.weight": torch.randn(D, 3, PATCH, PATCH),
          "backbone.layers.0.attn.qkv.weight": qkv_w, "backbone.layers.0.attn.q_bias": qb,
          "backbone.layers.0.attn.v_bias": vb, "backbone.layers.0.attn.relative_position_index": torch.zeros(5, 5),
          "neck.upsample_2x.0.weight": torch.randn(D, D, 2, 2), "decode_head.conv_seg.weight": torch.randn(3, 8, 1, 1)}
    ck = parse_state({"state_dict": sd, "meta": {"epoch": 1}})
    assert ck.format == "mmseg"
    assert torch.equal(ck.encoder["blocks.0.attn.qkv.bias"], torch.cat([qb, torch.zeros(D), vb]))
    assert set(ck.encoder) == {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"}
    assert set(ck.neck) == {"upsample_2x.0.weight"} and set(ck.other) == {"decode_head.conv_seg.weight"}


def test_task_model_checkpoint_prefix_is_found(tmp_path):
    vit = _ours()
    _randomize(vit, 6)
    model = {**{f"module.backbone.vit.{k}": v for k, v in vit.state_dict().items()},
             "module.backbone.pyramid.simfp_4.0.weight": torch.randn(4, D, 1, 1),
             "module.roi_heads.mask_head.weight": torch.randn(3)}
    torch.save({"model": model, "optimizer": {}, "epoch": 1, "rng": {"numpy": np.random.get_state()},
                "config": {"train": {"lr": 1e-4}}}, tmp_path / "checkpoint.pth")
    ck = read_checkpoint(tmp_path / "checkpoint.pth")
    assert ck.format == "maetransfer"
    _assert_same(ck.encoder, vit.state_dict())
    assert set(ck.other) == {"backbone.pyramid.simfp_4.0.weight", "roi_heads.mask_head.weight"}


def _cli():
    return load_tool("convert_checkpoint").main


def test_cli_converts_to_hf(official, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    path, _, _ = official
    main = _cli()
    main([str(path), "--output", str(tmp_path / "hf"), "--to", "hf", "--num-heads", str(HEADS), "--decoder-num-heads",
          str(DEC_HEADS)])
    out = capsys.readouterr().out
    assert "read" in out and "as mae" in out and "decoder 32 tensors" in out
    assert transformers.ViTMAEConfig.from_pretrained(tmp_path / "hf").num_attention_heads == HEADS
    with pytest.raises(SystemExit) as info:
        main([str(path), "--output", str(tmp_path / "x.pth"), "--to", "mae", "--model", "vit_base"])
    assert "embed 32/depth 2, not vit_base" in str(info.value) and "\n" not in str(info.value)


def test_a_fine_tuned_classifier_to_hf_names_the_missing_final_norm(tmp_path):
    """An official fine-tuned file of a global-pool classifier (fc_norm, no final norm; timm's layout as well) has
    nothing for HF ViTMAE's final layernorm: one line saying so, not a complaint about the installed transformers."""
    pytest.importorskip("transformers")
    classifier = TimmViT(img_size=IMG, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=5,
                         global_pool="avg", fc_norm=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
    assert "norm.weight" not in classifier.state_dict() and "fc_norm.weight" in classifier.state_dict()
    torch.save({"model": classifier.state_dict()}, tmp_path / "finetuned.pth")
    with pytest.raises(SystemExit) as info:
        _cli()([str(tmp_path / "finetuned.pth"), "--output", str(tmp_path / "hf"), "--to", "hf", "--num-heads",
                str(HEADS)])
    message = str(info.value)
    assert "fc_norm instead of the final norm" in message and "--to mae or --to timm" in message
    assert "transformers" not in message.replace("HF ViTMAE", "") and "\n" not in message.strip()
    assert not (tmp_path / "hf").exists()


# --- safety and clear errors -------------------------------------------------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}, "x": _Exploit(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to unpickle .*pathlib.*--unsafe-load"):
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
    read_checkpoint(tmp_path / "evil.pth", unsafe=True)  # the explicit opt-in does run it
    assert marker.exists()


def test_plain_pickle_is_read_with_numpy_only(tmp_path):
    import pickle
    vit = _ours()
    arrays = {f"backbone.net.{k}": v.numpy() for k, v in vit.state_dict().items()}
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    ck = read_checkpoint(tmp_path / "model_final.pkl")
    assert ck.format == "detectron2"
    _assert_same(ck.encoder, vit.state_dict())
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": arrays, "x": _Exploit(marker)}, f)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        read_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_corrupt_and_wrong_files_give_one_line(official, tmp_path):
    path, _, _ = official
    (tmp_path / "trunc.pth").write_bytes(path.read_bytes()[:1000])
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint at all")
    torch.save({"model": {"conv.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")
    for name, pattern in [("trunc.pth", "truncated or corrupt"), ("garbage.pth", "truncated or corrupt"),
                          ("resnet.pth", "no ViT patch embedding found"), ("missing.pth", "checkpoint not found")]:
        with pytest.raises(CheckpointError, match=pattern) as info:
            read_checkpoint(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("case, problem", [("missing.pth", "checkpoint not found"),
                                           ("garbage.pth", "truncated or corrupt"),
                                           ("evil.pth", "refused to unpickle")])
def test_the_converter_reports_a_bad_source_in_one_line_and_writes_nothing(case, problem, tmp_path):
    """As a user runs tools/convert_checkpoint.py: exit with one line naming the file; no output, no code run."""
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint at all")
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}, "x": _Exploit(tmp_path / "pwned")},
               tmp_path / "evil.pth")
    with pytest.raises(SystemExit) as info:
        _cli()([str(tmp_path / case), "--output", str(tmp_path / "out.pth"), "--to", "timm"])
    message = str(info.value)
    assert message.startswith(f"error: {tmp_path / case}") and problem in message and "\n" not in message
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "pwned").exists()


def test_wrong_model_size_is_a_clear_error(official):
    path, _, _ = official
    ck = read_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"is a ViT with embed 32/depth 2 but the model is embed 32/depth 3"):
        load_into(build_vit("vit_micro", img_size=IMG, patch_size=PATCH, embed_dim=D, depth=3, num_heads=2), ck)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc1\.weight has shape \(128, 32\) but the model "
                                              r"expects \(64, 32\)"):
        load_into(_ours(mlp_ratio=2.0), ck)


def test_missing_encoder_weights_and_unusable_weights_fail_strictly(official):
    path, _, _ = official
    ck = read_checkpoint(path)
    broken = {k: v for k, v in ck.encoder.items() if k != "blocks.1.mlp.fc2.weight"}
    with pytest.raises(CheckpointError, match=r"lacks 1 encoder tensors the model needs: blocks\.\*\.mlp\.fc2\.weight"):
        load_into(_ours(), broken)
    load_into(_ours(), broken, strict_report=False, verbose=False)
    scaled = dict(ck.encoder, **{f"blocks.{i}.ls1.gamma": torch.ones(D) for i in range(DEPTH)})
    with pytest.raises(CheckpointError, match="layer scale weights the model cannot use.*layer_scale_init"):
        load_into(_ours(), scaled)


# --- transfer-time adaptation ------------------------------------------------------------------------------------
def _bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """1-D resize matrix of Keys' cubic convolution (a = -0.75), half-pixel centres (align_corners=False), border
    samples repeated, no antialias: the interpolation MAE/detectron2/mmseg use for pos_embed."""
    def w(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a if t < 2 else 0.0
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = (i + 0.5) * n_in / n_out - 0.5
        x0 = math.floor(x)
        for k in range(-1, 3):
            m[i, min(max(x0 + k, 0), n_in - 1)] += w(x - (x0 + k))
    return m


@pytest.mark.parametrize("old,new", [(2, 3), (4, 3), (3, 5)])
def test_interpolated_pos_embed_equals_hand_computation(old, new, capsys):
    src = _ours(img_size=old * PATCH)
    _randomize(src, 7)
    target = _ours(img_size=new * PATCH)
    load_into(target, src.state_dict())
    assert f"resized pos_embed {old}x{old} -> {new}x{new}" in capsys.readouterr().out
    pos = src.pos_embed.detach().double().numpy()[0]
    grid = pos[1:].reshape(old, old, D)
    m = _bicubic_matrix(old, new)
    expected = np.einsum("ia,jb,abc->ijc", m, m, grid).reshape(new * new, D)
    got = target.pos_embed.detach().numpy()[0]
    np.testing.assert_allclose(got[0], pos[0], rtol=0, atol=0)  # the cls row is kept as is
    np.testing.assert_allclose(got[1:], expected, atol=1e-5)


def test_patch_embed_kernel_is_resampled():
    """timm's resample_patch_embed (FlexiViT) keeps <x, w> = <resize(x), w'> when the patch grows (ViT-H p14->p16):
    checked on one patch resized with the same bicubic+antialias resize."""
    src = build_vit("vit_micro", img_size=8, patch_size=8, embed_dim=D, depth=1, num_heads=2)
    _randomize(src, 8)
    target = build_vit("vit_micro", img_size=16, patch_size=16, embed_dim=D, depth=1, num_heads=2)
    report = load_into(target, src.state_dict(), verbose=False)
    assert any("resampled patch_embed.proj.weight from patch 8 to 16" in n for n in report.notes)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    x_big = torch.nn.functional.interpolate(x, size=(16, 16), mode="bicubic", antialias=True)
    w, b = src.patch_embed.proj.weight.double(), src.patch_embed.proj.bias.double()
    w2 = target.patch_embed.proj.weight.double()
    ref = torch.nn.functional.conv2d(x, w, b, stride=8)
    got = torch.nn.functional.conv2d(x_big, w2, b, stride=16)
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)


def test_finetuned_release_into_a_new_classifier(capsys):
    """An official fine-tuned file (fc_norm + head, no norm) into a global-pool classifier for another dataset."""
    src = build_vit("vit_micro", img_size=IMG, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                    global_pool="avg", num_classes=1000)
    _randomize(src, 9)
    ck = LoadedCheckpoint({k: v for k, v in src.state_dict().items() if not k.startswith(("fc_norm", "head"))},
                          head={k: v for k, v in src.state_dict().items() if k.startswith(("fc_norm", "head"))},
                          source="mae_finetuned_vit_micro.pth")
    same = build_vit("vit_micro", img_size=IMG, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                     global_pool="avg", num_classes=1000)
    assert load_into(same, ck, verbose=False).missing == []
    other = build_vit("vit_micro", img_size=IMG, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                      global_pool="avg", num_classes=5)
    report = load_into(other, ck)
    assert report.missing == ["head.bias", "head.weight"]
    out = capsys.readouterr().out
    assert "skipped the checkpoint's head.weight (1000, 32): the model's is (5, 32)" in out
    assert torch.equal(other.fc_norm.weight, src.fc_norm.weight)


def test_summary_explains_a_detection_backbone(official, capsys):
    path, _, _ = official
    det = _ours(img_size=64, class_token=False, window_size=2, global_blocks=(1,), rel_pos="decomposed")
    load_into(det, read_checkpoint(path))
    out = capsys.readouterr().out
    assert out.count("\n") < 12, out  # one compact summary
    assert "relative-position tables (added at transfer, zero-initialised): blocks.*.attn.rel_pos_h (x2)" in out
    assert "cls_token (this model has no class token" in out
    assert "resized pos_embed 4x4 -> 8x8" in out
    assert "ignored the MAE decoder (32 tensors)" in out


def test_relative_position_tables_of_another_size_are_resized_on_load(capsys):
    """A ViTDet backbone trained at another size (decomposed tables, linear like detectron2's get_rel_pos) and an
    mmseg-style backbone (BEiT bias table with cls rows, resized as timm/BEiT do) load into models of other sizes."""
    from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

    det_src = _ours(img_size=64, class_token=False, rel_pos="decomposed")  # 8x8 grid: tables of 15 rows
    with torch.no_grad():
        for block in det_src.blocks:
            block.attn.rel_pos_h.copy_(torch.randn_like(block.attn.rel_pos_h))
            block.attn.rel_pos_w.fill_(0.5)
    det = _ours(img_size=32, class_token=False, rel_pos="decomposed")  # 4x4 grid: 7 rows
    load_into(det, det_src.state_dict())
    table = det_src.blocks[0].attn.rel_pos_h
    expected = torch.nn.functional.interpolate(table.t()[None], size=7, mode="linear")[0].t()
    torch.testing.assert_close(det.blocks[0].attn.rel_pos_h, expected)
    assert torch.equal(det.blocks[1].attn.rel_pos_w, torch.full((7, D // HEADS), 0.5))  # a constant stays constant

    seg_src = _ours(img_size=32, rel_pos="bias")  # 4x4 grid: 7*7 + 3 rows
    with torch.no_grad():
        for block in seg_src.blocks:
            block.attn.relative_position_bias_table.copy_(torch.randn_like(block.attn.relative_position_bias_table))
    seg = _ours(img_size=64, rel_pos="bias")  # 8x8: 15*15 + 3 rows
    load_into(seg, seg_src.state_dict())
    src_table = seg_src.blocks[0].attn.relative_position_bias_table
    new_table = seg.blocks[0].attn.relative_position_bias_table
    assert new_table.shape == (15 * 15 + 3, HEADS) and torch.equal(new_table[-3:], src_table[-3:])
    torch.testing.assert_close(new_table, resize_rel_pos_bias_table(src_table, (8, 8), (15 * 15 + 3, HEADS)))
    # the zero offset keeps its value: the centre of the 7x7 source grid lands on the centre of the 15x15 one
    torch.testing.assert_close(new_table[7 * 15 + 7], src_table[3 * 7 + 3])
    # a table that is constant per head stays constant (resampling, not extrapolation or re-indexing)
    with torch.no_grad():
        seg_src.blocks[1].attn.relative_position_bias_table.copy_(torch.arange(HEADS).float().expand(7 * 7 + 3, -1))
    load_into(seg, seg_src.state_dict())
    torch.testing.assert_close(seg.blocks[1].attn.relative_position_bias_table,
                               torch.arange(HEADS).float().expand(15 * 15 + 3, -1))
    assert "resized 4 relative-position tables" in capsys.readouterr().out
