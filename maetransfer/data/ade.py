"""ADE20K (SceneParsing ADEChallengeData2016) reading and the mmseg training / test pipelines.

Layout: `<root>/images/{training,validation}/*.jpg` and `<root>/annotations/{training,validation}/*.png` (8-bit label
maps, 0 = "other", 1..150 = classes). `reduce_zero_label` maps 0 -> 255 (ignored) and k -> k-1. Other data sets: any
image and label-map folders with any file endings, paired by name as mmseg's BaseSegDataset does (`ADE20KDataset`).

Pipelines follow mmseg 1.x `configs/_base_/datasets/ade20k.py` step by step (mmcv/mmseg semantics noted per
function): train = RandomResize(scale (2048, 512), ratio 0.5-2.0, keep ratio) -> RandomCrop(512, cat_max_ratio .75)
-> RandomFlip(.5) -> PhotoMetricDistortion -> normalise -> pad to the crop (image 0 after normalisation, label 255);
test = Resize((2048, 512), keep ratio) -> normalise, with the label kept at the original size. Images stay uint8
until normalisation as in mmseg. Decoding, resizing and the HSV conversions are OpenCV's own (mmcv's `imfrombytes`,
`imrescale` and `bgr2hsv` call them): torch's bilinear kernel samples where INTER_LINEAR does but rounds otherwise
(OpenCV interpolates in fixed point), so only OpenCV itself gives mmseg's pixels. The (3, H, W) RGB tensors here go
through OpenCV as (H, W, 3) copies; mmseg holds BGR arrays, which changes nothing: resizing is per channel and the
HSV conversions are taken from RGB (COLOR_RGB2HSV) where mmseg takes them from BGR.
Random draws use numpy's global generator, which the training engine seeds per epoch, rank and worker.
"""
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..files import temporary_path
from .images import ROOT_HINT, DatasetError, ImageReadError, MissingFileError

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# mmseg ADE20KDataset.METAINFO['classes'] (index = reduced label)
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall",
    "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase",
    "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag")

# mmseg ADE20KDataset.METAINFO['palette']: the RGB colour of each class above, as mmseg draws ADE20K results
ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0),
    (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255),
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255),
    (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0),
    (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184), (0, 31, 255),
    (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255),
    (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0),
    (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143),
    (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212),
    (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204),
    (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255))


# -- files ------------------------------------------------------------------------------------------------------------
def read_image(path: Path) -> torch.Tensor:
    """RGB uint8 (3, H, W) decoded as mmseg's LoadImageFromFile does (mmcv `imfrombytes`: `cv2.imdecode` with
    IMREAD_COLOR, which applies the EXIF orientation and makes grey, 16-bit and alpha images 8-bit colour)."""
    try:
        data = np.fromfile(path, np.uint8)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: image file not found") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read image ({' '.join(str(exc).split())})") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ImageReadError(f"{path}: cannot read image (not an image format OpenCV decodes, or a damaged file)")
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)[::-1]))


def read_label(path: Path, num_classes: int, reduce_zero_label: bool, ignore_index: int = 255) -> torch.Tensor:
    """uint8 (H, W) label map, checked and reduced: raw values must be 0..num_classes (reduce_zero_label) or
    0..num_classes-1 / ignore_index. A 16-bit, RGB or unreadable PNG and a value out of range raise DatasetError
    naming the file."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            raw = np.asarray(im).copy() if mode in ("L", "P") else None
    except FileNotFoundError:
        raise MissingFileError(f"{path}: label file not found") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"{path}: cannot read label ({' '.join(str(exc).split())})") from None
    if raw is None:
        raise DatasetError(f"{path}: label PNG must be single-channel 8-bit (mode L or P), got mode {mode}")
    if reduce_zero_label:
        bad = raw > num_classes
        allowed = f"0..{num_classes}"
    else:
        bad = (raw >= num_classes) & (raw != ignore_index)
        allowed = f"0..{num_classes - 1} or {ignore_index}"
    if bad.any():
        raise DatasetError(f"{path}: label value {int(raw[bad][0])} is outside {allowed} "
                           f"({int(bad.sum())} pixels)")
    label = torch.from_numpy(raw)
    if reduce_zero_label:
        # mmseg LoadAnnotations: 0 -> 255, then k -> k - 1 (uint8 arithmetic), 254 -> 255
        label = torch.where(label == 0, torch.full_like(label, ignore_index), label - 1)
    return label


def _split_folders(root: Path, folder: str, split: str) -> List[Path]:
    """Where the `split` part of `folder` may be, the first that exists first: `folder/split` (ADE20K's
    images/training, mmseg's img_path='images/train'), else `split/folder` (the train/images, val/images layout of many
    own data sets), so that one key serves both layouts without a placeholder that YAML or the shell would read."""
    candidates = [root / folder / split, root / split / folder]
    if Path(folder).is_absolute():  # root / split / "/abs" would be /abs itself, the same folder for every split
        candidates[1] = candidates[0]
    return sorted(candidates, key=lambda d: not d.is_dir())


def files_by_stem(folder: Path, suffix: str) -> Dict[str, str]:
    """{path relative to `folder` without `suffix`: path relative to `folder`} of the files below `folder` (sub-folders
    included, as mmseg's BaseSegDataset lists them) whose names end with `suffix`."""
    found = {}
    for parent, dirs, names in os.walk(folder):
        dirs.sort()
        prefix = os.path.relpath(parent, folder)
        prefix = "" if prefix == "." else prefix.replace(os.sep, "/") + "/"
        found.update({prefix + name[:-len(suffix)]: prefix + name for name in names if name.endswith(suffix)})
    return found


def split_folders(root: Path, split: str, img_dir: str = "", ann_dir: str = "") -> Tuple[Path, Path]:
    """(image folder, label folder) of `split`: data.img_dir / data.ann_dir under `root` (each holding the split's
    folder or inside it), else the ADEChallengeData2016 layout; MissingFileError (one line) for a missing one."""
    if img_dir or ann_dir:
        folders = [_split_folders(root, given or default, split)
                   for given, default in ((img_dir, "images"), (ann_dir, "annotations"))]
        for first, other in folders:
            if not first.is_dir():
                raise MissingFileError(f"{first}: directory not found, nor {other} (data.img_dir={img_dir}, "
                                       f"data.ann_dir={ann_dir}, split {split}, under data.root)")
        return folders[0][0], folders[1][0]
    images, labels = root / "images" / split, root / "annotations" / split
    for folder in (images, labels):
        if not folder.is_dir():
            raise MissingFileError(f"{folder}: directory not found (expected the ADEChallengeData2016 layout "
                                   f"images/{split}/*.jpg + annotations/{split}/*.png; {ROOT_HINT}, or "
                                   "data.img_dir / data.ann_dir to your folders)")
    return images, labels


class ADE20KDataset(Dataset):
    """Images and label maps of one split: `root/images/<split>/*.jpg` with `root/annotations/<split>/*.png` of the
    same stem (ADEChallengeData2016), or any two folders as mmseg's BaseSegDataset pairs them: `img_dir` and
    `ann_dir` (relative to `root` unless absolute), each with the split as its sub-folder or inside the split's
    folder (`_split_folders`), files found in sub-folders too, an image `<name><img_suffix>` paired with the label
    map `<name><seg_map_suffix>` at the same relative path.

    Returns {'image': uint8 (3, H, W), 'label': int64 (H, W), 'name': the pair's name with '/' as '_'} passed through
    `transform` when given.

    Checked when built, each failure one line naming the folder or file: both folders exist and hold images, every
    image has its label map and every label map its image (one listing per folder), and the first pair is read in
    full (a dataset converted wrongly as a whole, with RGB or 16-bit labels, other values or sizes, fails here).
    Every other label is checked when it is read: 8-bit single channel, values in range, the size of its image.
    Reading all 20k ADE20K label headers up front would take 1.4 s (4 s with the image headers) on a warm cache.
    """

    def __init__(self, root, split: str, num_classes: int = 150, reduce_zero_label: bool = True,
                 transform=None, ignore_index: int = 255, img_dir: str = "", ann_dir: str = "",
                 img_suffix: str = ".jpg", seg_map_suffix: str = ".png"):
        self.root = Path(root)
        img_dir, ann_dir = split_folders(self.root, split, img_dir, ann_dir)
        images, labels = files_by_stem(img_dir, img_suffix), files_by_stem(ann_dir, seg_map_suffix)
        if not images:
            others = sorted(os.listdir(img_dir))
            content = f"it holds {len(others)} other files, e.g. {others[0]}" if others else "it is empty"
            raise DatasetError(f"{img_dir}: no {img_suffix} images ({content})")
        kind = "label PNG" if seg_map_suffix.lower().endswith(".png") else "label map"
        unlabelled = sorted(set(images) - set(labels))
        if unlabelled:
            raise MissingFileError(f"{ann_dir}: {len(unlabelled)} of the {len(images)} images in {img_dir} have no "
                                   f"{kind}, first {images[unlabelled[0]]} (expected {unlabelled[0]}{seg_map_suffix})")
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise MissingFileError(f"{img_dir}: {len(orphans)} {kind}s in {ann_dir} have no image, first "
                                   f"{labels[orphans[0]]} (expected {orphans[0]}{img_suffix})")
        self.samples: List[Tuple[Path, Path]] = [(img_dir / images[key], ann_dir / labels[key])
                                                 for key in sorted(images, key=images.get)]
        self.names = [key.replace("/", "_") for key in sorted(images, key=images.get)]
        self.num_classes, self.reduce_zero_label = num_classes, reduce_zero_label
        self.ignore_index, self.transform = ignore_index, transform
        self.read(0)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> Dict:
        """Sample `index` before the transform, checked."""
        img_path, ann_path = self.samples[index]
        image = read_image(img_path)
        label = read_label(ann_path, self.num_classes, self.reduce_zero_label, self.ignore_index)
        if tuple(image.shape[1:]) != tuple(label.shape):
            raise DatasetError(f"{ann_path}: label size {tuple(label.shape)} differs from image size "
                               f"{tuple(image.shape[1:])} of {img_path.name}")
        return {"image": image, "label": label.long(), "name": self.names[index]}

    def __getitem__(self, index: int) -> Dict:
        sample = self.read(index)
        return self.transform(sample) if self.transform is not None else sample


# -- geometry ---------------------------------------------------------------------------------------------------------
def rescale_size(h: int, w: int, scale: Sequence[float]) -> Tuple[int, int]:
    """mmcv `rescale_size` for a (long, short) scale bound, keeping the aspect ratio: (new_h, new_w)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def view_size(h: int, w: int, scale: Sequence[float], ratio: float = 1.0,
              min_size: Optional[int] = None) -> Tuple[int, int]:
    """Size of a test image at `ratio` x `scale` (mmseg 0.x MultiScaleFlipAug scales = ratio * img_scale).
    With `min_size` (mmseg Resize(min_size=...), used by the MAE/BEiT multi-scale tests) the short side becomes
    max(short bound, min_size) and the long-side bound no longer applies, so no view is smaller than the crop."""
    bound = (int(scale[0] * ratio), int(scale[1] * ratio))
    if min_size is None:
        return rescale_size(h, w, bound)
    short = max(min(bound), min_size)
    return rescale_size(h, w, (short * max(h, w) / min(h, w), short))


def _hwc(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) CPU tensor as the contiguous (H, W, C) array OpenCV takes."""
    return np.ascontiguousarray(image.cpu().numpy().transpose(1, 2, 0))


def _chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.reshape(*array.shape[:2], -1).transpose(2, 0, 1)))


def resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """uint8 (3, H, W) on any device -> uint8 (3, h, w) on the CPU: `cv2.resize` INTER_LINEAR (mmcv `imresize`)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image.cpu()
    return _chw(cv2.resize(_hwc(image), (size[1], size[0]), interpolation=cv2.INTER_LINEAR))


def resize_label(label: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(H, W) 8-bit values (`read_label`), any integer dtype -> (h, w): `cv2.resize` INTER_NEAREST on uint8, as mmcv
    resizes mmseg's uint8 label maps."""
    if tuple(label.shape) == tuple(size):
        return label
    resized = cv2.resize(label.to(torch.uint8).numpy(), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(resized).to(label.dtype)


def random_resize(image: torch.Tensor, label: torch.Tensor, scale: Sequence[int],
                  ratio_range: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """mmcv RandomResize(scale, ratio_range, keep_ratio=True): bound = int(scale * r), r ~ U(ratio_range)."""
    r = np.random.random_sample() * (ratio_range[1] - ratio_range[0]) + ratio_range[0]
    size = rescale_size(image.shape[1], image.shape[2], (int(scale[0] * r), int(scale[1] * r)))
    return resize_image(image, size), resize_label(label, size)


def crop_bbox(label: torch.Tensor, crop_size: Tuple[int, int], cat_max_ratio: float = 1.0,
              ignore_index: int = 255) -> Tuple[int, int, int, int]:
    """mmseg RandomCrop.crop_bbox: a random (y1, y2, x1, x2) window; with cat_max_ratio < 1, up to 10 re-draws until
    the window holds more than one category and no category covers cat_max_ratio or more of its labelled pixels."""
    h, w = label.shape

    def draw():
        off_h = np.random.randint(0, max(h - crop_size[0], 0) + 1)
        off_w = np.random.randint(0, max(w - crop_size[1], 0) + 1)
        return off_h, off_h + crop_size[0], off_w, off_w + crop_size[1]

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y1, y2, x1, x2 = box
            values, counts = torch.unique(label[y1:y2, x1:x2], return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max().item() / counts.sum().item() < cat_max_ratio:
                break
            box = draw()
    return box


def random_crop(image: torch.Tensor, label: torch.Tensor, crop_size: Tuple[int, int], cat_max_ratio: float,
                ignore_index: int = 255) -> Tuple[torch.Tensor, torch.Tensor]:
    y1, y2, x1, x2 = crop_bbox(label, crop_size, cat_max_ratio, ignore_index)
    return image[:, y1:y2, x1:x2], label[y1:y2, x1:x2]


# -- photometric distortion (mmseg PhotoMetricDistortion on uint8 images, OpenCV's 8-bit HSV) ----------------------
def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> uint8 HSV, H in 0..179: `cv2.cvtColor` (mmcv `bgr2hsv` on mmseg's BGR array)."""
    return _chw(cv2.cvtColor(_hwc(image), cv2.COLOR_RGB2HSV))


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """uint8 HSV (H 0..179) -> uint8 RGB: `cv2.cvtColor` (mmcv `hsv2bgr`)."""
    return _chw(cv2.cvtColor(_hwc(hsv), cv2.COLOR_HSV2RGB))


def _convert(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    # float32 maths, clip, then truncate to uint8 (numpy astype) exactly as mmseg's `convert`
    return (x.float() * alpha + beta).clamp(0, 255).to(torch.uint8)


def photometric_distortion(image: torch.Tensor, brightness_delta: int = 32,
                           contrast_range: Sequence[float] = (0.5, 1.5),
                           saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18) -> torch.Tensor:
    """mmseg PhotoMetricDistortion: each step with probability 0.5, in mmseg's order and draws: brightness,
    contrast (first or last, by a coin), saturation (HSV S x alpha), hue (H + randint[-delta, delta) mod 180)."""
    if np.random.randint(2):
        image = _convert(image, beta=np.random.uniform(-brightness_delta, brightness_delta))
    mode = np.random.randint(2)
    if mode == 1 and np.random.randint(2):
        image = _convert(image, alpha=np.random.uniform(*contrast_range))
    if np.random.randint(2):
        hsv = rgb_to_hsv(image)
        hsv[1] = _convert(hsv[1], alpha=np.random.uniform(*saturation_range))
        image = hsv_to_rgb(hsv)
    if np.random.randint(2):
        hsv = rgb_to_hsv(image)
        hsv[0] = ((hsv[0].long() + np.random.randint(-hue_delta, hue_delta)) % 180).to(torch.uint8)
        image = hsv_to_rgb(hsv)
    if mode == 0 and np.random.randint(2):
        image = _convert(image, alpha=np.random.uniform(*contrast_range))
    return image


def normalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 (x - mean) / std per RGB channel."""
    mean = torch.tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return (image.float() - mean) / std


# -- pipelines --------------------------------------------------------------------------------------------------------
class SegTrainTransform:
    """The mmseg ADE20K training pipeline (module docstring) from the `data` config section."""

    def __init__(self, data_cfg, ignore_index: int = 255):
        self.scale = tuple(data_cfg.scale)
        self.ratio_range = tuple(data_cfg.ratio_range)
        self.crop_size = tuple(data_cfg.crop_size)
        self.cat_max_ratio = float(data_cfg.cat_max_ratio)
        self.flip_prob = float(data_cfg.flip_prob)
        self.photometric = bool(data_cfg.photometric)
        self.mean, self.std = tuple(data_cfg.mean), tuple(data_cfg.std)
        self.ignore_index = ignore_index

    def __call__(self, sample: Dict) -> Dict:
        image, label = random_resize(sample["image"], sample["label"], self.scale, self.ratio_range)
        image, label = random_crop(image, label, self.crop_size, self.cat_max_ratio, self.ignore_index)
        if np.random.random_sample() < self.flip_prob:
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = photometric_distortion(image)
        x = normalize(image, self.mean, self.std)
        # pad after normalisation (mmseg SegDataPreProcessor / 0.x Normalize -> Pad): image 0, label ignore
        ph, pw = self.crop_size[0] - x.shape[1], self.crop_size[1] - x.shape[2]
        if ph > 0 or pw > 0:
            x = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)), value=0.0)
            label = F.pad(label, (0, max(pw, 0), 0, max(ph, 0)), value=self.ignore_index)
        return {"image": x, "label": label, "name": sample["name"]}


def collate_train(batch: List[Dict]) -> Dict:
    return {"image": torch.stack([b["image"] for b in batch]), "label": torch.stack([b["label"] for b in batch])}


# -- the demo data set --------------------------------------------------------------------------------------------------
def write_demo_ade20k(root, n_train: int = 200, n_val: int = 40, size: int = 128, seed: int = 0) -> Path:
    """Write synthetic scenes (maetransfer.data.demo) in the ADEChallengeData2016 layout.

    Label = 1 + shape category on the shape's pixels and 0 on the background, so with reduce_zero_label the
    background is ignored exactly like ADE20K's "other" (0) and the 6 shapes are classes 0..5. Written to a temporary
    folder and renamed (`root` must not exist or be empty), so an interrupted run never leaves a half-written set.
    """
    from .demo import publish_folder, render_scenes

    root = Path(root)
    tmp = temporary_path(root)
    for split, n, split_seed in (("training", n_train, seed), ("validation", n_val, seed + 1)):
        img_dir, ann_dir = tmp / "images" / split, tmp / "annotations" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        prefix = "ADE_train" if split == "training" else "ADE_val"
        for i, (image, instances) in enumerate(render_scenes(n, size=size, seed=split_seed)):
            label = np.zeros(image.shape[:2], dtype=np.uint8)
            for inst in instances:
                label[inst.mask] = inst.category + 1
            Image.fromarray(image).save(img_dir / f"{prefix}_{i:08d}.jpg", quality=95)
            Image.fromarray(label).save(ann_dir / f"{prefix}_{i:08d}.png")
    root.parent.mkdir(parents=True, exist_ok=True)
    return publish_folder(tmp, root)
