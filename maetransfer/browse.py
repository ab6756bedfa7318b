"""The work of tools/browse_dataset.py: a split of a task's data set drawn for a person, as the training reads it
(detection: masks, boxes and class names; segmentation: the label map in the class colours; classification: the
class name on the image), optionally after the task's training transform (`augmented`, undoing its normalisation), and
the whole split checked for the problems a user should fix before training.

A data set problem is not raised: it is collected (`Problems`) and listed in one summary at the end, printed and
written as problems.json next to the pictures. Problems are looked for in the whole split (detection and
classification: the annotation file, and which listed images exist; segmentation: every label map is read), images
themselves are decoded only when drawn. Bad input that stops the run (a missing config, folder or annotation file, a
file that is not the format at all) is an `InputError`, as in training.
"""
import io
import json
import os
import random
import re
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

from .cli import check_writable_folder, refuse_earlier_outputs
from .config import ConfigError
from .data.ade import SegTrainTransform, files_by_stem, read_image, split_folders
from .data.cls import (FORMATS, LETTER_DIR, build_transform, check_num_classes, image_folder_classes, inat_categories,
                       read_categories, split_index)
from .data.coco import CocoDetection, CocoFormatError, LargeScaleJitter, box_outside, drop_reason
from .data.images import (IMAGENET_MEAN, IMAGENET_STD, ROOT_HINT, DatasetError, MissingFileError, read_annotation_json,
                          read_rgb)
from .data.instances import polygons_to_bitmask
from .det.train import coco_split
from .det.visualize import fill_masks
from .drawing import display_size, distinct_colours, draw_tag, font, font_size, resize_for_display
from .errors import InputError
from .files import atomic_write, write_text
from .seg.train import class_names, class_palette
from .seg.visualize import class_colours, draw_segmentation

# The kinds of problems, in the order the summary lists them.
LABEL_OUT_OF_RANGE = "label out of range"
UNKNOWN_IMAGE = "annotation of an image that is not listed"
BOX_OUTSIDE = "box outside its image"
UNUSABLE_ANNOTATION = "annotation that gives no instance"
NO_ANNOTATION = "image with no annotation"
SEVERAL_LABELS = "image with several labels"
EMPTY_CLASS = "class with no instance"
BAD_ENTRY = "malformed entry"
BAD_LABEL_MAP = "label map that cannot be used"
ORPHAN_LABEL = "label map without its image"
UNREADABLE_IMAGE = "image that cannot be read"
KINDS = (LABEL_OUT_OF_RANGE, UNKNOWN_IMAGE, BOX_OUTSIDE, UNUSABLE_ANNOTATION, NO_ANNOTATION, SEVERAL_LABELS,
         EMPTY_CLASS, BAD_ENTRY, BAD_LABEL_MAP, ORPHAN_LABEL, UNREADABLE_IMAGE)

PROBLEMS_FILE = "problems.json"
MAX_LISTED = 1000   # items of one kind written to problems.json (the count is always the total)
PRINTED = 3         # examples of each kind in the printed summary
PRINTED_CLASSES = 20  # classes with no instance named in the printed summary

# <index in the split, 5+ digits>_<image stem>[_augmented].png
PICTURE = re.compile(r"\d{5,}_.+\.png")


class Problems:
    """Data set problems by kind, each a one-line description naming the file and the entry."""

    def __init__(self):
        self.items: Dict[str, List[str]] = {}

    def add(self, kind: str, text: str) -> None:
        self.items.setdefault(kind, []).append(text)

    def count(self, kind: str) -> int:
        return len(self.items.get(kind, []))

    def __bool__(self) -> bool:
        return bool(self.items)

    def kinds(self) -> List[str]:
        return sorted(self.items, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))

    def to_json(self) -> List[Dict]:
        out = []
        for kind in self.kinds():
            items = self.items[kind]
            entry = {"kind": kind, "count": len(items), "items": items[:MAX_LISTED]}
            if len(items) > MAX_LISTED:
                entry["items_left_out"] = len(items) - MAX_LISTED
            out.append(entry)
        return out

    def summary(self, what: str, where: Path) -> List[str]:
        if not self.items:
            return [f"no problems found in {what}"]
        total = sum(len(v) for v in self.items.values())
        lines = [f"{total} problem{'s' * (total > 1)} in {what} (all of them in {where}):"]
        for kind in self.kinds():
            items = self.items[kind]
            if kind == EMPTY_CLASS:  # short items: the classes on one line
                more = ", ..." if len(items) > PRINTED_CLASSES else ""
                lines += [f"  {kind}: {len(items)}", f"    {', '.join(items[:PRINTED_CLASSES])}{more}"]
                continue
            more = f" (and {len(items) - PRINTED} more)" if len(items) > PRINTED else ""
            lines.append(f"  {kind}: {len(items)}{more}")
            lines += [f"    {item}" for item in items[:PRINTED]]
        return lines


def to_uint8(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A (3, H, W) image as the model sees it back to uint8 pixels: float images are un-normalised with `mean` and
    `std` (0..255 values, or 0..1 values for a transform that divides by 255 first, as torchvision's ToTensor)."""
    if image.dtype == torch.uint8:
        return image
    mean_t = torch.tensor([float(m) for m in mean]).view(3, 1, 1)
    std_t = torch.tensor([float(s) for s in std]).view(3, 1, 1)
    pixels = image.float() * std_t + mean_t
    if max(float(m) for m in mean) <= 1.0:
        pixels = pixels * 255.0
    return pixels.round().clamp(0, 255).to(torch.uint8)


def normalisation(cfg: DictConfig) -> Tuple[Sequence[float], Sequence[float]]:
    """The mean and std the task's training transform normalises with: data.mean/std, else timm's ImageNet default
    (0..1 values: the classification transforms)."""
    mean, std = OmegaConf.select(cfg, "data.mean"), OmegaConf.select(cfg, "data.std")
    return (list(mean), list(std)) if mean is not None else (IMAGENET_MEAN, IMAGENET_STD)


def _as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).contiguous()


def _note(picture: Image.Image, text: str) -> Image.Image:
    """`text` in a grey tag at the picture's top-left corner."""
    draw_tag(ImageDraw.Draw(picture), (0, 0), text, (200, 200, 200), font(font_size(picture.height, picture.width)),
             above=False)
    return picture


class Browser:
    """One split of a task's data set: what is drawn, and its problems (found when it is built)."""

    task = ""
    split = ""               # the split's name in the data set (train2017, training, train.json, ...)
    source = ""              # the file or folder it is read from
    class_names: List[str] = []

    def __init__(self):
        self.skip: Set[int] = set()   # indices whose problem is recorded already: not drawn

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def listed(self) -> int:
        """How many images the split lists (some may not be drawable: `skip`, or left out of `len`)."""
        return len(self)

    def stem(self, index: int) -> str:
        raise NotImplementedError

    def draw(self, index: int, augmented: bool) -> Image.Image:
        """The picture of sample `index`; InputError when its files cannot be read (a problem of that image)."""
        raise NotImplementedError


# -- detection ---------------------------------------------------------------------------------------------------------
def draw_instances(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, masks: Optional[torch.Tensor],
                   class_names: Sequence[str]) -> Image.Image:
    """Ground-truth instances on `image` (uint8 (3, H, W)): masks (bool (N, H, W)) filled in the instance's colour,
    boxes (xyxy) and class-name tags, at `drawing.display_size`."""

    h, w = image.shape[1:]
    out_h, out_w = display_size(h, w)
    canvas = resize_for_display(image, (out_h, out_w))
    if not len(labels):
        return _note(Image.fromarray(canvas.permute(1, 2, 0).numpy()), "no instance")
    palette = torch.from_numpy(distinct_colours(len(labels)))
    colours = [tuple(int(v) for v in c) for c in palette]
    if masks is not None and len(masks):
        canvas = fill_masks(canvas, masks.bool(), palette)
    scaled = boxes.float() * torch.tensor([out_w / w, out_h / h] * 2)
    size = font_size(out_h, out_w)
    canvas = draw_bounding_boxes(canvas, scaled, colors=colours, width=max(2, size // 6))
    picture = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    draw, text_font = ImageDraw.Draw(picture), font(size)
    for box, label, colour in zip(scaled.tolist(), labels.tolist(), colours):
        draw_tag(draw, (box[0], box[1]), class_names[label], colour, text_font)
    return picture


class _CocoSplit(CocoDetection):
    """A COCO split built from annotations already read and checked here (CocoDetection's reading, targets and
    transforms; its own build-time checks would stop at the first problem)."""

    def __init__(self, image_dir: Path, ann_file: Path, coco, transforms=None):  # not CocoDetection's checks
        self.image_dir, self.ann_file, self.coco, self.transforms = image_dir, ann_file, coco, transforms
        self.category_ids = sorted(self.coco.cats)
        self.category_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {cat_id: i for i, cat_id in enumerate(self.category_ids)}
        self.ids = sorted(self.coco.imgs)


def _missing_files(root: Path, names: Sequence[str]) -> List[int]:
    """Indices of `names` (relative to `root`) that do not exist; one listing per folder."""
    listings: Dict[str, frozenset] = {}
    missing = []
    for index, name in enumerate(names):
        folder, _, base = name.rpartition("/")
        if folder not in listings:
            try:
                listings[folder] = frozenset(os.listdir(root / folder))
            except OSError:
                listings[folder] = frozenset()
        if base not in listings[folder]:
            missing.append(index)
    return missing


class DetectionBrowser(Browser):
    """A COCO-layout split (data.train_split / val_split); --augmented: LargeScaleJitter (model.img_size,
    data.scale_range, data.flip_prob), which outputs uint8 images."""

    task = "det"

    def __init__(self, cfg: DictConfig, split: str, problems: Problems):
        super().__init__()
        from pycocotools.coco import COCO


        d = cfg.data
        image_dir, ann_file = coco_split(d, split)  # data.<split>_json / _images, else the COCO 2017 layout
        self.split = ann_file.name if OmegaConf.select(d, f"{split}_json") else str(d[f"{split}_split"])
        self.source = str(ann_file)
        data = read_annotation_json(ann_file, error=CocoFormatError)
        for kind, keys in (("images", ("id", "file_name", "height", "width")), ("categories", ("id", "name")),
                           ("annotations", ("id", "image_id", "category_id", "bbox"))):
            for i, entry in enumerate(data[kind]):
                absent = [k for k in keys if not isinstance(entry, dict) or k not in entry]
                if absent:
                    raise CocoFormatError(f"{ann_file}: {kind}[{i}] lacks {', '.join(absent)}")
        if not data["images"]:
            raise CocoFormatError(f"{ann_file}: lists no images")
        if not data["categories"]:
            raise CocoFormatError(f"{ann_file}: lists no categories")
        images = {img["id"]: img for img in data["images"]}
        categories = {cat["id"]: cat["name"] for cat in data["categories"]}
        kept, instances, used_images = [], {c: 0 for c in categories}, set()
        for i, ann in enumerate(data["annotations"]):
            info = images.get(ann["image_id"])
            if info is None:
                problems.add(UNKNOWN_IMAGE, f"{ann_file.name}: annotation id {ann['id']}: image_id {ann['image_id']} "
                                            "is not in 'images'")
                continue
            where = f"annotation id {ann['id']} ({info['file_name']})"
            if ann["category_id"] not in categories:
                problems.add(LABEL_OUT_OF_RANGE, f"{where}: category_id {ann['category_id']} is not one of the "
                                                 f"{len(categories)} categories")
                continue
            kept.append(ann)
            if ann.get("iscrowd", 0):
                continue
            reason = drop_reason(ann, info["height"], info["width"])
            if reason is not None:
                problems.add(UNUSABLE_ANNOTATION, f"{where}: {reason}")
                continue
            if box_outside(ann["bbox"], info["height"], info["width"]):
                problems.add(BOX_OUTSIDE, f"{where}: box (x, y, w, h) {list(ann['bbox'])} lies outside the "
                                          f"{info['width']}x{info['height']} image")
            instances[ann["category_id"]] += 1
            used_images.add(ann["image_id"])
        for image_id in sorted(images):
            if image_id not in used_images:
                problems.add(NO_ANNOTATION, f"image id {image_id} ({images[image_id]['file_name']})")
        for cat_id in sorted(categories):
            if not instances[cat_id]:
                problems.add(EMPTY_CLASS, f"category id {cat_id} '{categories[cat_id]}'")
        coco = COCO()
        coco.dataset = dict(data, annotations=kept)
        with redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            coco.createIndex()
        self.dataset = _CocoSplit(image_dir, ann_file, coco)
        self.class_names = self.dataset.category_names
        names = [str(coco.imgs[i]["file_name"]) for i in self.dataset.ids]
        for index in _missing_files(image_dir, names):
            problems.add(UNREADABLE_IMAGE, f"{image_dir / names[index]}: image file not found (listed in "
                                           f"{ann_file.name})")
            self.skip.add(index)
        if len(self.skip) == len(names):
            raise MissingFileError(f"{ann_file}: none of its {len(names)} images is in {image_dir} ({ROOT_HINT})")
        self.lsj = LargeScaleJitter(int(cfg.model.img_size), tuple(d.scale_range), float(d.flip_prob))

    def __len__(self) -> int:
        return len(self.dataset)

    def stem(self, index: int) -> str:
        return Path(str(self.dataset.coco.imgs[self.dataset.ids[index]]["file_name"])).stem

    def draw(self, index: int, augmented: bool) -> Image.Image:
        image_id = self.dataset.ids[index]
        image, target = self.dataset.load_image(image_id), self.dataset.load_target(image_id)
        if augmented:
            image, target = self.lsj(image, target)
        h, w = image.shape[1:]
        masks = target["masks"]
        if not isinstance(masks, torch.Tensor):  # polygons
            masks = torch.from_numpy(np.stack([polygons_to_bitmask(p, h, w) for p in masks])) if masks else None
        return draw_instances(image, target["boxes"], target["labels"], masks, self.class_names)


# -- segmentation ------------------------------------------------------------------------------------------------------
def _image_size(path: Path) -> Tuple[int, int]:
    """(H, W) of an image file as read (EXIF orientation applied), from its header."""
    with Image.open(path) as im:
        w, h = im.size
        transposed = im.getexif().get(0x0112) in (5, 6, 7, 8)
    return (w, h) if transposed else (h, w)


class _LabelStats(Dataset):
    """Per label map: (index, problem kind or None, text, {raw value: pixels}), read in loader workers."""

    def __init__(self, pairs: Sequence[Tuple[Path, Path]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_path, label_path = self.pairs[index]
        try:
            with Image.open(label_path) as im:
                mode = im.mode
                raw = np.asarray(im) if mode in ("L", "P") else None
        except (OSError, ValueError, SyntaxError) as exc:
            return index, BAD_LABEL_MAP, f"cannot read label ({' '.join(str(exc).split())})", None
        if raw is None:
            return index, BAD_LABEL_MAP, f"label PNG must be single-channel 8-bit (mode L or P), got mode {mode}", None
        try:
            size = _image_size(image_path)
        except (OSError, ValueError, SyntaxError) as exc:
            return index, UNREADABLE_IMAGE, f"cannot read image ({' '.join(str(exc).split())})", None
        if tuple(raw.shape) != size:
            return (index, BAD_LABEL_MAP, f"label size {tuple(raw.shape)} differs from image size {size} of "
                                          f"{image_path.name}", None)
        counts = np.bincount(raw.ravel(), minlength=256)
        return index, None, "", {int(v): int(counts[v]) for v in np.flatnonzero(counts)}


class SegmentationBrowser(Browser):
    """A segmentation split (data.train_split / val_split) in the configured layout: ADE20K's images/<split> and
    annotations/<split>, or data.img_dir / data.ann_dir with data.img_suffix / data.seg_map_suffix, paired as
    `ADE20KDataset` pairs them; --augmented: SegTrainTransform, normalised with data.mean/std and padded to
    data.crop_size."""

    task = "seg"

    def __init__(self, cfg: DictConfig, split: str, problems: Problems, workers: int = 0):
        super().__init__()

        d = cfg.data
        self.class_names = class_names(cfg)
        self.colours = class_colours(self.class_names, class_palette(cfg, len(self.class_names)))
        self.num_classes = len(self.class_names)
        self.reduce = bool(d.reduce_zero_label)
        self.ignore = int(cfg.model.ignore_index)
        self.split = str(d.train_split if split == "train" else d.val_split)
        root = Path(d.root)
        img_suffix, seg_suffix = str(d.img_suffix), str(d.seg_map_suffix)
        image_folder, label_folder = split_folders(root, self.split, str(d.img_dir), str(d.ann_dir))
        self.source = str(image_folder)
        images, labels = files_by_stem(image_folder, img_suffix), files_by_stem(label_folder, seg_suffix)
        if not images:
            raise DatasetError(f"{image_folder}: no {img_suffix} images")
        for key in sorted(set(labels) - set(images)):
            problems.add(ORPHAN_LABEL, f"{label_folder / labels[key]}: no image {key}{img_suffix} in {image_folder}")
        keys = sorted(images, key=images.get)
        self.samples: List[Tuple[Path, Optional[Path]]] = [
            (image_folder / images[key], label_folder / labels[key] if key in labels else None) for key in keys]
        self.names = [key.replace("/", "_") for key in keys]
        for index, (image_path, label_path) in enumerate(self.samples):
            if label_path is None:
                problems.add(NO_ANNOTATION, f"{image_path}: no label map (expected "
                                            f"{label_folder / keys[index]}{seg_suffix})")
                self.skip.add(index)
        self._check_labels(problems, workers)
        self.transform = SegTrainTransform(d, self.ignore)
        self.mean, self.std = list(d.mean), list(d.std)

    def _valid(self, raw: int) -> Optional[int]:
        """The class of raw label value `raw`, -1 for an ignored value, None for one out of range."""
        if self.reduce:
            return None if raw > self.num_classes else raw - 1
        if raw == self.ignore:
            return -1
        return raw if raw < self.num_classes else None

    def _allowed(self) -> str:
        return f"0..{self.num_classes}" if self.reduce else f"0..{self.num_classes - 1} or {self.ignore}"

    def _check_labels(self, problems: Problems, workers: int) -> None:
        """Every label map read: readable, of its image's size, values in range, some class pixel; and which classes
        occur in the split."""
        indices = [i for i, (_, label) in enumerate(self.samples) if label is not None]
        stats = _LabelStats([self.samples[i] for i in indices])
        loader = DataLoader(stats, batch_size=None, num_workers=workers)
        pixels = np.zeros(self.num_classes, dtype=np.int64)
        results = {}
        for position, kind, text, counts in tqdm(loader, total=len(stats), desc="check label maps", unit="map",
                                                 dynamic_ncols=True, leave=False, disable=len(stats) < 200):
            results[indices[position]] = (kind, text, counts)
        for index in sorted(results):
            kind, text, counts = results[index]
            image_path, label_path = self.samples[index]
            if kind is not None:
                problems.add(kind, f"{image_path if kind == UNREADABLE_IMAGE else label_path}: {text}")
                self.skip.add(index)
                continue
            classes = {v: self._valid(v) for v in counts}
            bad = {v: n for v, n in counts.items() if classes[v] is None}
            if bad:
                values = ", ".join(f"{v} ({n} pixels)" for v, n in sorted(bad.items()))
                problems.add(LABEL_OUT_OF_RANGE, f"{label_path}: values outside {self._allowed()}: {values}")
            present = [c for v, c in classes.items() if c is not None and c >= 0]
            for v, c in classes.items():
                if c is not None and c >= 0:
                    pixels[c] += counts[v]
            if not present:
                problems.add(NO_ANNOTATION, f"{label_path}: no pixel of any class (all ignored)")
        for c in np.flatnonzero(pixels == 0):
            problems.add(EMPTY_CLASS, f"class {int(c)} '{self.class_names[c]}'")

    def __len__(self) -> int:
        return len(self.samples)

    def stem(self, index: int) -> str:
        return self.names[index]

    def read_label(self, path: Path) -> torch.Tensor:
        """The label map as training uses it ((H, W) int64 classes, `ignore` elsewhere); values out of range are
        drawn as ignored (they are reported)."""
        with Image.open(path) as im:
            raw = torch.from_numpy(np.asarray(im).astype(np.int64))
        lut = torch.full((256,), self.ignore, dtype=torch.int64)
        for v in range(256):
            c = self._valid(v)
            if c is not None and c >= 0:
                lut[v] = c
        return lut[raw]

    def draw(self, index: int, augmented: bool) -> Image.Image:

        image_path, label_path = self.samples[index]
        image, label = read_image(image_path), self.read_label(label_path)
        if augmented:
            sample = self.transform({"image": image, "label": label, "name": self.names[index]})
            image, label = to_uint8(sample["image"], self.mean, self.std), sample["label"]
        return draw_segmentation(image, label, self.class_names, self.colours)


# -- classification ----------------------------------------------------------------------------------------------------
class ClassificationBrowser(Browser):
    """A classification split in data.format (inat / places / imagefolder); --augmented: the timm training transform
    (`cls.build_transform`), normalised with the ImageNet mean and std."""

    task = "cls"

    def __init__(self, cfg: DictConfig, split: str, problems: Problems):
        super().__init__()

        d = cfg.data
        if d.format not in FORMATS:
            raise ConfigError(f"data.format '{d.format}' is not one of {', '.join(FORMATS)}")
        root = Path(d.root)
        index = split_index(d, split)
        self.split = str(d[f"{split}_split"])
        self.source = str(index)
        self.image_root = root / str(d[f"{split}_images"] or "")
        num_classes = int(d.num_classes) if d.num_classes is not None else None
        if d.format == "inat":
            paths, labels, names, listed = self._inat(index, num_classes, problems)
        elif d.format == "places":
            categories = root / str(d.categories) if d.categories else None
            paths, labels, names, listed = self._places(index, num_classes, categories, problems)
        else:
            self.image_root = index
            paths, labels, names = self._folder(index, num_classes)
            listed = len(paths)
        if not paths:
            raise DatasetError(f"{index}: lists no usable image")
        self.paths, self.labels, self.class_names = paths, labels, names
        self._listed = listed
        for i in _missing_files(self.image_root, paths):
            problems.add(UNREADABLE_IMAGE, f"{self.image_root / paths[i]}: image file not found (listed in "
                                           f"{index.name})")
            self.skip.add(i)
        if len(self.skip) == len(paths):
            raise MissingFileError(f"{index}: none of its {len(paths)} images is under {self.image_root} "
                                   f"({ROOT_HINT})")
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
        for c in np.flatnonzero(counts == 0):
            problems.add(EMPTY_CLASS, f"class {int(c)} '{names[c]}'")
        self.transform = build_transform(cfg, is_train=True)
        self.mean, self.std = normalisation(cfg)

    def _inat(self, path: Path, num_classes: Optional[int], problems: Problems):
        data = read_annotation_json(path, error=DatasetError)
        cat_ids, names, label_of = inat_categories(data, path, num_classes)
        label_of_image: Dict = {}
        for n, ann in enumerate(data["annotations"]):
            try:
                image_id, cat = ann["image_id"], int(ann["category_id"])
            except (KeyError, TypeError, ValueError):
                problems.add(BAD_ENTRY, f"{path.name}: annotation #{n} needs 'image_id' and an integer 'category_id'")
                continue
            if cat not in label_of:
                problems.add(LABEL_OUT_OF_RANGE, f"{path.name}: annotation #{n} (image id {image_id}): category_id "
                                                 f"{cat} is not in 'categories'")
                continue
            if label_of_image.setdefault(image_id, label_of[cat]) != label_of[cat]:
                problems.add(SEVERAL_LABELS, f"{path.name}: image id {image_id}: annotations of categories "
                                             f"{cat_ids[label_of_image[image_id]]} and {cat} (the first is used)")
        paths, labels = [], []
        for n, img in enumerate(data["images"]):
            try:
                image_id, file_name = img["id"], str(img["file_name"])
            except (KeyError, TypeError):
                problems.add(BAD_ENTRY, f"{path.name}: image #{n} needs 'id' and 'file_name'")
                continue
            if image_id not in label_of_image:
                problems.add(NO_ANNOTATION, f"{path.name}: image id {image_id} ({file_name})")
                continue
            paths.append(file_name)
            labels.append(label_of_image[image_id])
        return paths, labels, [names[c] for c in cat_ids], len(data["images"])

    def _places(self, path: Path, num_classes: Optional[int], categories: Optional[Path], problems: Problems):

        if not path.is_file():
            raise MissingFileError(f"{path}: list file not found ({ROOT_HINT})")
        names = read_categories(categories) if categories else None
        if names is not None:
            check_num_classes(len(names), num_classes, categories)
            num_classes = len(names)
        if num_classes is None:
            raise ConfigError(f"{path}: set data.num_classes (or data.categories) for a list-file dataset")
        paths, labels, listed = [], [], 0
        with open(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                listed += 1
                parts = line.rsplit(maxsplit=1)
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    problems.add(BAD_ENTRY, f"{path.name}: line {lineno}: expected 'image_path label', got "
                                            f"{line.strip()!r}")
                    continue
                label = int(parts[1])
                if not 0 <= label < num_classes:
                    problems.add(LABEL_OUT_OF_RANGE, f"{path.name}: line {lineno}: label {label} outside "
                                                     f"[0, {num_classes})")
                    continue
                paths.append(parts[0].lstrip("/"))
                labels.append(label)
        if names is None:
            names = [str(i) for i in range(num_classes)]
            for p, label in zip(paths, labels):
                if names[label] == str(label) and "/" in p:
                    names[label] = LETTER_DIR.sub("", os.path.dirname(p))
        return paths, labels, names, listed

    def _folder(self, folder: Path, num_classes: Optional[int]):
        classes, class_to_idx = image_folder_classes(folder, num_classes)
        samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        return [os.path.relpath(p, folder).replace(os.sep, "/") for p, _ in samples], [c for _, c in samples], classes

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def listed(self) -> int:
        return self._listed

    def stem(self, index: int) -> str:
        return Path(self.paths[index]).stem

    def draw(self, index: int, augmented: bool) -> Image.Image:
        pil = read_rgb(self.image_root / self.paths[index])
        image = to_uint8(self.transform(pil), self.mean, self.std) if augmented else _as_tensor(pil)
        h, w = image.shape[1:]
        size = display_size(h, w)
        picture = Image.fromarray(resize_for_display(image, size).permute(1, 2, 0).numpy())
        label = self.labels[index]
        colour = tuple(int(v) for v in distinct_colours(len(self.class_names))[label])
        draw_tag(ImageDraw.Draw(picture), (0, 0), self.class_names[label], colour, font(font_size(*size)),
                 above=False)
        return picture


BROWSERS = {"det": DetectionBrowser, "seg": SegmentationBrowser, "cls": ClassificationBrowser}


# -- the tool ----------------------------------------------------------------------------------------------------------
def picture_name(index: int, stem: str, augmented: bool) -> str:
    return f"{index:05d}_{stem}{'_augmented' * augmented}.png"


def check_outputs(out: Path, overwrite: bool) -> None:
    """Before anything is written: `out` can be a folder, and (unless `overwrite`) holds no pictures or summary of an
    earlier browse."""
    check_writable_folder(out, "--output-dir")
    if overwrite or not out.is_dir():
        return
    earlier = sorted(p.name for p in out.iterdir() if p.name == PROBLEMS_FILE or PICTURE.fullmatch(p.name))
    refuse_earlier_outputs(out, earlier, "browse", overwrite)


def seed_everything(seed: int) -> None:
    """The random draws of the training transforms (numpy: LSJ, mmseg pipeline; random and torch: timm)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def browse(cfg: DictConfig, task: str, split: str, out: Path, num: int = 16, augmented: bool = False,
           seed: int = 0, workers: int = 0, config_name: str = "") -> Dict:
    """Draw the first `num` drawable samples (0: all) of the task's `split` ('train' / 'val') into `out`, write
    problems.json and print the summary; returns what problems.json holds."""
    start = time.time()
    seed_everything(seed)
    problems = Problems()
    browser = (SegmentationBrowser(cfg, split, problems, workers) if task == "seg" else
               BROWSERS[task](cfg, split, problems))
    wanted = len(browser) - len(browser.skip) if num <= 0 else min(num, len(browser) - len(browser.skip))
    written: List[str] = []
    with tqdm(total=wanted, desc="draw", unit="picture", dynamic_ncols=True, leave=False) as bar:
        for index in range(len(browser)):
            if len(written) >= wanted:
                break
            if index in browser.skip:
                continue
            try:
                picture = browser.draw(index, augmented)
            except InputError as exc:
                problems.add(UNREADABLE_IMAGE, " ".join(str(exc).split()))
                continue
            name = picture_name(index, browser.stem(index), augmented)
            atomic_write(out / name, lambda tmp: picture.save(tmp, format="PNG"))
            written.append(name)
            bar.update(1)
    what = f"{browser.split} ({browser.listed} images, {len(browser.class_names)} classes)"
    report = {"config": config_name, "task": task, "split": browser.split, "source": browser.source,
              "images": browser.listed, "classes": len(browser.class_names), "augmented": augmented,
              "pictures": written, "problems": problems.to_json()}
    write_text(out / PROBLEMS_FILE, json.dumps(report, indent=1) + "\n")
    took = time.time() - start
    print(f"{len(written)} picture{'s' * (len(written) != 1)} of {browser.split}"
          f"{' after the training transform' * augmented} written to {out} in {took:.1f} s")
    for line in problems.summary(what, out / PROBLEMS_FILE):
        print(line)
    sys.stdout.flush()
    return report
