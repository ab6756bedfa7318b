"""ADE20K reading, reduce_zero_label, file errors, and the mmseg transforms against hand-computed values."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from maetransfer.config import load_config
from maetransfer.data import ade
from maetransfer.data.ade import (ADE20KDataset, SegTrainTransform, crop_bbox, hsv_to_rgb, photometric_distortion,
                                  rescale_size, rgb_to_hsv, view_size, write_demo_ade20k)


def _write(root, split, stem, label, image=None):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    h, w = label.shape
    image = np.full((h, w, 3), 128, np.uint8) if image is None else image
    Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg")
    if label.ndim == 2:
        Image.fromarray(label.astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")


def test_reduce_zero_label(tmp_path):
    _write(tmp_path, "training", "a", np.array([[0, 1, 2], [150, 1, 0]]))
    ds = ADE20KDataset(tmp_path, "training")
    sample = ds[0]
    assert sample["label"].tolist() == [[255, 0, 1], [149, 0, 255]]
    assert sample["image"].shape == (3, 2, 3) and sample["image"].dtype == torch.uint8
    ds = ADE20KDataset(tmp_path, "training", reduce_zero_label=False, num_classes=151)
    assert ds[0]["label"].tolist() == [[0, 1, 2], [150, 1, 0]]


def test_bad_label_value_names_the_file(tmp_path):
    _write(tmp_path, "training", "bad", np.array([[0, 151]]))
    with pytest.raises(ValueError, match=r"bad\.png: label value 151 is outside 0\.\.150"):
        ADE20KDataset(tmp_path, "training")[0]


def test_missing_annotation_names_the_file(tmp_path):
    _write(tmp_path, "training", "ok", np.array([[1, 2]]))
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "images" / "training" / "lonely.jpg")
    with pytest.raises(FileNotFoundError, match=r"training: 1 of the 2 images in .*training have no label PNG, "
                                                r"first lonely\.jpg \(expected lonely\.png\)"):
        ADE20KDataset(tmp_path, "training")


def test_rgb_label_and_missing_split_are_errors(tmp_path):
    _write(tmp_path, "training", "rgb", np.array([[1, 2]]))
    Image.fromarray(np.zeros((1, 2, 3), np.uint8)).save(tmp_path / "annotations" / "training" / "rgb.png")
    with pytest.raises(ValueError, match=r"rgb\.png: label PNG must be single-channel"):
        ADE20KDataset(tmp_path, "training")[0]
    with pytest.raises(FileNotFoundError, match="validation: directory not found"):
        ADE20KDataset(tmp_path, "validation")


def test_rescale_sizes_by_hand():
    # mmcv rescale_size: factor = min(2048 / long, 512 / short), sizes int(x * f + 0.5)
    assert rescale_size(300, 400, (2048, 512)) == (512, 683)
    assert rescale_size(512, 683, (2048, 512)) == (512, 683)
    assert rescale_size(200, 1000, (2048, 512)) == (410, 2048)   # long side bound: f = 2.048
    # ms view 0.5: bound (1024, 256) -> f = min(1024/1500, 256/300) = 0.6827; with min_size 512 the short side is 512
    assert view_size(300, 1500, (2048, 512), 0.5) == (205, 1024)
    assert view_size(300, 1500, (2048, 512), 0.5, min_size=512) == (512, 2560)
    assert view_size(300, 1500, (2048, 512), 1.5, min_size=512) == (768, 3840)


def test_crop_cat_max_ratio(monkeypatch):
    label = torch.zeros(8, 16, dtype=torch.long)
    label[:, 12:] = 1
    # scripted offsets (h, w) for successive draws: x1 = 12 (one class), x1 = 9 (3/4 of one class: not < 0.75),
    # x1 = 10 (2 + 2 columns): accepted
    draws = iter([0, 12, 0, 9, 0, 10, 0, 0])
    monkeypatch.setattr(ade.np.random, "randint", lambda lo, hi: next(draws))
    assert crop_bbox(label, (8, 4), 0.75) == (0, 8, 10, 14)
    assert next(draws) == 0 and next(draws) == 0  # exactly three windows drawn
    # ignored pixels do not count as a class: [0, 0, 255, 255] is one class (rejected), [0, 255, 255, 1] accepted
    label = torch.zeros(8, 16, dtype=torch.long)
    label[:, 2:4] = 255
    label[:, 4] = 1
    draws = iter([0, 0, 0, 1])
    monkeypatch.setattr(ade.np.random, "randint", lambda lo, hi: next(draws))
    assert crop_bbox(label, (8, 4), 0.75) == (0, 8, 1, 5)
    # without cat_max_ratio: one draw
    draws = iter([0, 3])
    assert crop_bbox(label, (8, 4), 1.0) == (0, 8, 3, 7)


def test_crop_gives_up_after_ten_redraws(monkeypatch):
    label = torch.zeros(4, 4, dtype=torch.long)  # one class everywhere: every window is rejected
    calls = []
    monkeypatch.setattr(ade.np.random, "randint", lambda lo, hi: calls.append(1) or 0)
    crop_bbox(label, (2, 2), 0.75)
    assert len(calls) == 2 * 11  # the first draw + 10 re-draws


def test_hsv_integer_path_by_hand():
    # cv2 8-bit formulas: V = max, S = round(255 * diff / V), H = 30 * (g - b) / diff (+ 60 / 120 sectors), 0..179
    rgb = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 128, 0], [10, 200, 100], [128, 128, 128]],
                       dtype=torch.uint8).t().reshape(3, 1, 6)
    hsv = rgb_to_hsv(rgb).reshape(3, 6).t().tolist()
    assert hsv == [[0, 255, 255], [60, 255, 255], [120, 255, 255], [15, 255, 255], [74, 242, 200], [0, 0, 128]]
    back = hsv_to_rgb(rgb_to_hsv(rgb))
    assert (back.int() - rgb.int()).abs().max() <= 1


def test_photometric_hue_only(monkeypatch):
    image = torch.tensor([[255, 0, 0], [0, 255, 0], [40, 80, 200]], dtype=torch.uint8).t().reshape(3, 1, 3)
    # coins: brightness no, mode 0, saturation no, hue yes (delta -5), final contrast no
    ints = iter([0, 0, 0, 1, -5, 0])
    monkeypatch.setattr(ade.np.random, "randint", lambda *a: next(ints))
    out = photometric_distortion(image)
    h_in, h_out = rgb_to_hsv(image)[0].reshape(-1).long(), rgb_to_hsv(out)[0].reshape(-1).long()
    assert ((h_in - 5) % 180 - h_out).abs().max() <= 1
    assert h_out[0] == 175  # red wraps around


def test_brightness_truncates_like_numpy(monkeypatch):
    image = torch.tensor([100, 250], dtype=torch.uint8).repeat(3, 1).reshape(3, 1, 2)
    ints = iter([1, 0, 0, 0, 0])                     # brightness yes, mode 0, no saturation / hue / contrast
    monkeypatch.setattr(ade.np.random, "randint", lambda *a: next(ints))
    monkeypatch.setattr(ade.np.random, "uniform", lambda lo, hi: 10.7)
    out = photometric_distortion(image)
    assert out[0].tolist() == [[110, 255]]          # 110.7 truncated, 260.7 clipped


def test_train_transform_pads_small_crops():
    cfg = load_config("configs/seg/base.yaml").data
    cfg = OmegaConf.merge(cfg, {"scale": [64, 16], "ratio_range": [1.0, 1.0], "crop_size": [32, 32]})
    np.random.seed(0)
    sample = {"image": torch.full((3, 20, 40), 200, dtype=torch.uint8), "label": torch.ones(20, 40, dtype=torch.long),
              "name": "x"}
    out = SegTrainTransform(cfg)(sample)   # resized to 16 x 32, cropped to 16 x 32, padded to 32 x 32
    assert out["image"].shape == (3, 32, 32) and out["label"].shape == (32, 32)
    assert (out["label"][16:] == 255).all() and (out["label"][:16] == 1).all()
    assert (out["image"][:, 16:] == 0).all()


def test_demo_writer_roundtrip(tmp_path):
    write_demo_ade20k(tmp_path, n_train=3, n_val=2, size=32)
    train, val = ADE20KDataset(tmp_path, "training", num_classes=6), ADE20KDataset(tmp_path, "validation", 6)
    assert len(train) == 3 and len(val) == 2
    values = set(torch.cat([train[i]["label"].flatten() for i in range(3)]).tolist())
    assert values <= set(range(6)) | {255} and 255 in values and len(values) > 1
