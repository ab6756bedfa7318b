"""ADE20K reading, reduce_zero_label, file errors, and the mmseg transforms against hand-computed values and against
OpenCV called as mmcv calls it (decoding, resizing, HSV), on real photos."""
import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from maetransfer.config import load_config
from maetransfer.data import ade
from maetransfer.data.ade import (ADE20KDataset, SegTrainTransform, crop_bbox, hsv_to_rgb, photometric_distortion,
                                  read_image, rescale_size, resize_label, rgb_to_hsv, view_size, write_demo_ade20k)
from maetransfer.data.images import ImageReadError
from maetransfer.seg.inference import predict
from real_photos import photo, write_photo_set


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


# -- against OpenCV, called as mmcv calls it ------------------------------------------------------------------------
def _mmcv_decode(path) -> np.ndarray:
    """mmcv LoadImageFromFile: imfrombytes(flag='color', backend='cv2') -> BGR (H, W, 3)."""
    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)


def _mmcv_rescale(bgr: np.ndarray, scale, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    """mmcv imrescale(img, (long, short) bound): factor min(long / max(h, w), short / min(h, w)), size
    int(x * factor + 0.5), then cv2.resize."""
    h, w = bgr.shape[:2]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return cv2.resize(bgr, (int(w * factor + 0.5), int(h * factor + 0.5)), interpolation=interpolation)


class _Probe:
    """A segmentor stand-in for `predict` that keeps the network input it was given."""
    num_classes = 2

    def encode_decode(self, x):
        self.seen = x
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])


@pytest.mark.parametrize("scale", [(2048, 512), (512, 128)])
def test_eval_pipeline_decodes_and_resizes_photos_as_mmcv_on_every_pixel(tmp_path, scale):
    """Every photo (portrait, square, landscape, 2.5:1 and 4:1 panoramas, a tall one, a small one enlarged): the
    dataset's image equals cv2.imdecode, and the network input of `predict` equals mmcv's imrescale (cv2 INTER_LINEAR)
    followed by mmseg's normalisation, on every pixel. (torch's bilinear kernel misses by a grey level on many.)"""
    cfg = load_config("configs/seg/base.yaml")
    eval_cfg = OmegaConf.merge(cfg.eval, {"mode": "whole"})
    paths = write_photo_set(tmp_path)
    dataset = ADE20KDataset(tmp_path, "validation")
    mean, std = np.array(cfg.data.mean, np.float32), np.array(cfg.data.std, np.float32)
    for sample in (dataset[i] for i in range(len(dataset))):
        bgr = _mmcv_decode(paths[sample["name"]])
        assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), bgr[:, :, ::-1])
        probe = _Probe()
        predict(probe, sample["image"], eval_cfg, scale, cfg.data.mean, cfg.data.std)
        expected = (_mmcv_rescale(bgr, scale)[:, :, ::-1].astype(np.float32) - mean) / std
        assert np.array_equal(probe.seen[0].permute(1, 2, 0).numpy(), expected), sample["name"]


def test_label_maps_resize_as_opencv_nearest():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 151, (37, 53)).astype(np.uint8)
    raw[:5] = 255
    for size in [(18, 26), (91, 130), (37, 200), (64, 64)]:
        out = resize_label(torch.from_numpy(raw).long(), size)
        assert out.dtype == torch.long
        assert np.array_equal(out.numpy(), cv2.resize(raw, size[::-1], interpolation=cv2.INTER_NEAREST))


def test_train_resize_is_mmcv_imrescale_for_image_and_label(tmp_path, monkeypatch):
    """RandomResize with its ratio drawn: the image bilinear and the label nearest, both at mmcv's size."""
    paths = write_photo_set(tmp_path)
    sample = ADE20KDataset(tmp_path, "validation")[2]
    monkeypatch.setattr(ade.np.random, "random_sample", lambda: 0.3)  # ratio 0.5 + 0.3 * 1.5 = 0.95
    image, label = ade.random_resize(sample["image"], sample["label"], (2048, 512), (0.5, 2.0))
    bound = (int(2048 * 0.95), int(512 * 0.95))
    assert np.array_equal(image.permute(1, 2, 0).numpy(),
                          _mmcv_rescale(_mmcv_decode(paths[sample["name"]]), bound)[:, :, ::-1])
    raw = sample["label"].to(torch.uint8).numpy()
    assert np.array_equal(label.numpy(), _mmcv_rescale(raw, bound, cv2.INTER_NEAREST))


def test_image_files_decode_as_opencv_exif_grey_and_damaged(tmp_path):
    """EXIF orientation applied (cv2.IMREAD_COLOR does), grey images as three equal channels, a damaged file one
    line naming it."""
    rgb = photo("cat")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=90)
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (3, rgb.shape[1], rgb.shape[0])
    assert np.array_equal(image.permute(1, 2, 0).numpy(), _mmcv_decode(tmp_path / "rotated.jpg")[:, :, ::-1])
    Image.fromarray(rgb[:, :, 1]).save(tmp_path / "grey.png")
    grey = read_image(tmp_path / "grey.png")
    assert grey.shape == (3, *rgb.shape[:2]) and all(torch.equal(c, torch.from_numpy(rgb[:, :, 1])) for c in grey)
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "bad.jpg")
    assert str(info.value).startswith(f"{tmp_path / 'bad.jpg'}: cannot read image") and "\n" not in str(info.value)


def _mmseg_photometric(bgr: np.ndarray) -> np.ndarray:
    """mmseg 1.x PhotoMetricDistortion as read, on mmseg's BGR array with OpenCV's HSV and numpy's global draws."""
    def convert(img, alpha=1.0, beta=0.0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    if np.random.randint(2):
        bgr = convert(bgr, beta=np.random.uniform(-32, 32))
    mode = np.random.randint(2)
    if mode == 1 and np.random.randint(2):
        bgr = convert(bgr, alpha=np.random.uniform(0.5, 1.5))
    if np.random.randint(2):
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=np.random.uniform(0.5, 1.5))
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if np.random.randint(2):
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + np.random.randint(-18, 18)) % 180
        bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0 and np.random.randint(2):
        bgr = convert(bgr, alpha=np.random.uniform(0.5, 1.5))
    return bgr


def test_photometric_distortion_equals_mmsegs_on_bgr_with_opencv_hsv():
    """32 seeds cover every branch; ours on RGB equals mmseg's algorithm on BGR on every pixel, with as many draws."""
    rgb = photo("coffee_pano")
    for seed in range(32):
        np.random.seed(seed)
        ours = photometric_distortion(torch.from_numpy(rgb.transpose(2, 0, 1).copy())).permute(1, 2, 0).numpy()
        next_ours = np.random.random_sample()
        np.random.seed(seed)
        theirs = _mmseg_photometric(np.ascontiguousarray(rgb[:, :, ::-1]))[:, :, ::-1]
        assert np.array_equal(ours, theirs) and np.random.random_sample() == next_ours, seed
