"""Classification datasets in their released on-disk formats, their transforms, and the demo data set.

Formats (paths in the index files are relative to an image folder, itself relative to the data root):
  inat       iNaturalist 2017/2018/2019 `{train,val}{year}.json`: COCO-like `images` (id, file_name),
             `annotations` (image_id, category_id) and `categories` (id, name); file_name is relative to the root.
             Category ids are mapped to contiguous labels in sorted-id order.
  places     "path label" list files: Places365 (`places365_train_standard.txt`, `places365_train_challenge.txt`,
             `places365_val.txt`; images in data_256/ and val_256/, names in categories_places365.txt) and
             Places205 (`trainvalsplit_places205/{train,val}_places205.csv`; images in
             data/vision/torralba/deeplearning/images256/).
  imagefolder  one sub-folder per class (ImageNet `train/`, `val/`), read with torchvision's folder scanner.
  csv        a user's own list: "path,label" per line (or "path label"; an optional header line), label = a class
             index or a class name; class names from an optional file of one name per line (`csv_dataset`).
Bad input raises DatasetError (MissingFileError for absent files) with one line naming the file and the entry; the
files an index lists are checked to exist when the dataset is built.
"""
import csv
import json
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from ..files import temporary_path
from .demo import SHAPES, publish_folder, render_scenes
from .images import (ROOT_HINT, DatasetError, ImageReadError, MissingFileError, find_missing, read_annotation_json,
                     read_rgb)

FORMATS = ("imagefolder", "inat", "places", "csv")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class LabeledImages(Dataset):
    """(image, label) pairs: image paths relative to `image_root`, integer labels in [0, len(classes)).

    `index_file` and `entries` name where each sample was listed (a line number or an image id) so that a missing or
    corrupt image is reported against the entry of the index file that refers to it. With `check_files` every
    listed image must exist when the dataset is built (one directory listing per folder: a 100k-entry list takes
    about 0.1 s); the first missing one is reported with its entry and the count of missing files.
    """

    def __init__(self, image_root: str, paths: Sequence[str], labels: Sequence[int], classes: List[str],
                 index_file: str, entry_kind: Optional[str] = None, entries: Optional[Sequence] = None,
                 transform=None, check_files: bool = True):
        self.image_root = str(image_root)
        # numpy arrays, not Python lists: Places205's 2.45 M entries take 334 MB as str/int objects (152 MB as arrays),
        # and forked loader workers copy those objects' pages as they touch reference counts; arrays stay shared.
        self.paths = np.array([p.encode() for p in paths], dtype=np.bytes_)
        self.targets = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.index_file = str(index_file)
        self.entry_kind = entry_kind
        self.entries = np.asarray(entries) if entries is not None else None
        self.transform = transform
        if not paths:
            raise DatasetError(f"{self.index_file}: lists no images")
        if check_files:
            missing, first = find_missing(self.image_root, paths)
            if missing:
                raise MissingFileError(f"{self.where(first)}: image {os.path.join(self.image_root, paths[first])} "
                                       f"not found ({missing} of the {len(paths)} listed images are missing)")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, i: int) -> str:
        """Image path of sample `i`, relative to `image_root`."""
        return self.paths[i].decode()

    def where(self, i: int) -> str:
        if self.entries is None:
            return self.index_file
        return f"{self.index_file}: {self.entry_kind} {self.entries[i]}"

    def __getitem__(self, i: int):
        try:
            image = read_rgb(os.path.join(self.image_root, self.path(i)))
        except ImageReadError as exc:  # name the index entry that lists the bad file as well
            raise DatasetError(f"{self.where(i)}: {exc}") from None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[i])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.index_file}: {len(self)} images, {self.num_classes} classes, "
                f"images under {self.image_root})")


def check_num_classes(found: int, expected: Optional[int], source: str) -> None:
    if expected is not None and found != expected:
        raise DatasetError(f"{source}: has {found} classes but data.num_classes is {expected}")


# -- iNaturalist ---------------------------------------------------------------------------------------------------
def inat_categories(data: Dict, json_path: Path, num_classes: Optional[int]):
    """(sorted category ids, {id: name}, {id: label}) of an iNaturalist annotation file's 'categories'."""
    try:
        cat_ids = sorted({int(c["id"]) for c in data["categories"]})
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{json_path}: every category needs an integer 'id'") from None
    if not cat_ids:
        raise DatasetError(f"{json_path}: 'categories' is empty")
    check_num_classes(len(cat_ids), num_classes, str(json_path))
    return cat_ids, names, {cid: i for i, cid in enumerate(cat_ids)}


def inat_dataset(json_path, image_root, num_classes: Optional[int] = None, transform=None) -> LabeledImages:
    """iNaturalist 2017/2018/2019 annotation file (one category per image)."""
    json_path = Path(json_path)
    data = read_annotation_json(json_path, error=DatasetError)
    cat_ids, names, label_of = inat_categories(data, json_path, num_classes)
    label_of_image = {}
    for n, ann in enumerate(data["annotations"]):
        try:
            image_id, cat = ann["image_id"], int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{json_path}: annotation #{n} needs 'image_id' and an integer 'category_id'") from None
        if cat not in label_of:
            raise DatasetError(f"{json_path}: annotation #{n} (image id {image_id}) has category_id {cat}, "
                               f"which is not in 'categories' (label out of range)")
        if label_of_image.setdefault(image_id, label_of[cat]) != label_of[cat]:
            raise DatasetError(f"{json_path}: image id {image_id} has annotations of two different categories")

    paths, labels, ids = [], [], []
    for n, img in enumerate(data["images"]):
        try:
            image_id, file_name = img["id"], str(img["file_name"])
        except (KeyError, TypeError):
            raise DatasetError(f"{json_path}: image #{n} needs 'id' and 'file_name'") from None
        if image_id not in label_of_image:
            raise DatasetError(f"{json_path}: image id {image_id} ({file_name}) has no annotation")
        paths.append(file_name)
        labels.append(label_of_image[image_id])
        ids.append(image_id)
    return LabeledImages(image_root, paths, labels, [names[c] for c in cat_ids], str(json_path), "image id", ids,
                         transform)


# -- Places list files ---------------------------------------------------------------------------------------------
LETTER_DIR = re.compile(r"^/?[a-z]/")  # Places group their class folders under the first letter: /a/airfield


def read_categories(path: Path) -> List[str]:
    """categories_places365.txt: "/a/airfield 0" lines, indices 0..N-1 in order."""
    if not path.is_file():
        raise DatasetError(f"{path}: category file not found")
    names = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(f"{path}: line {lineno}: expected 'name index', got {line.strip()!r}")
        names[int(parts[1])] = LETTER_DIR.sub("", parts[0])
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{path}: class indices are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))]


def places_dataset(list_path, image_root, num_classes: Optional[int] = None, categories=None,
                   transform=None) -> LabeledImages:
    """A Places205/Places365 "relative/path.jpg label" list. Class names come from `categories` (Places365's
    categories_places365.txt) or else from the class folders in the listed paths."""
    list_path = Path(list_path)
    if not list_path.is_file():
        raise DatasetError(f"{list_path}: list file not found")
    names = read_categories(Path(categories)) if categories else None
    if names is not None:
        check_num_classes(len(names), num_classes, str(categories))
        num_classes = len(names)
    if num_classes is None:
        raise DatasetError(f"{list_path}: set data.num_classes (or data.categories) for a list-file dataset")
    paths, labels, lines = [], [], []
    with open(list_path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetError(f"{list_path}: line {lineno}: expected 'image_path label', got {line.strip()!r}")
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise DatasetError(f"{list_path}: line {lineno}: label {label} out of range [0, {num_classes})")
            paths.append(parts[0].lstrip("/"))  # Places365 train lists start with '/': /a/airfield/00000001.jpg
            labels.append(label)
            lines.append(lineno)
    if not paths:
        raise DatasetError(f"{list_path}: the list is empty")
    if names is None:
        names = [str(i) for i in range(num_classes)]
        for path, label in zip(paths, labels):  # first listed image of each class names it by its folder
            if names[label] == str(label) and "/" in path:
                names[label] = LETTER_DIR.sub("", os.path.dirname(path))
    return LabeledImages(image_root, paths, labels, names, str(list_path), "line", lines, transform)


# -- CSV / text lists of one's own --------------------------------------------------------------------------------
def _read_csv_list(list_path: Path, image_root: str):
    """(path, label text, line number) rows of a "path,label" CSV or "path label" text list. Comma-separated when
    the file's first row has a comma (quoted fields as the csv module reads them, so paths may hold commas), else
    split at the last run of spaces (paths may hold spaces). The first row is a header when its path has no image
    ending and names no file under `image_root` ("path,label", "filename,class", ...)."""
    if not list_path.is_file():
        raise MissingFileError(f"{list_path}: list file not found (data.format=csv; {ROOT_HINT})")
    try:
        text = list_path.read_text(encoding="utf-8-sig")  # a BOM, as spreadsheet programs write, is not a path
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{list_path}: cannot read the list ({_one_line(exc)})") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    comma = bool(lines) and "," in lines[0][1]
    rows = []
    for lineno, line in lines:
        if comma:
            fields = [f.strip() for f in next(csv.reader([line]))]
        else:
            fields = line.strip().rsplit(maxsplit=1)
        if len(fields) != 2 or not all(fields):
            raise DatasetError(f"{list_path}: line {lineno}: expected 'image_path{',' if comma else ' '}label', "
                               f"got {line.strip()!r}")
        rows.append((fields[0].lstrip("/"), fields[1], lineno))
    if rows:
        path = rows[0][0]
        if not path.lower().endswith(IMG_EXTENSIONS) and not os.path.isfile(os.path.join(image_root, path)):
            rows = rows[1:]  # a header
    if not rows:
        raise DatasetError(f"{list_path}: the list is empty")
    return rows


def _is_index(label: str) -> bool:
    return label.lstrip("-").isdigit()


def _read_class_names(path: Path) -> List[str]:
    """One class name per line (blank lines skipped), line order = class index."""
    if not path.is_file():
        raise MissingFileError(f"{path}: class names file not found (data.categories)")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"{path}: no class names (one per line)")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DatasetError(f"{path}: class name {twice!r} is listed twice")
    return names


def csv_dataset(list_path, image_root, num_classes: Optional[int] = None, categories=None, train_list=None,
                train_images=None, transform=None) -> LabeledImages:
    """A list of one's own: "path,label" rows, paths relative to `image_root`, each label a class index or a class
    name (not both in one list). Classes: the names of `categories` (one per line, line order = index) when given;
    else, for names, the sorted names of `train_list` (the training list defines the classes for both splits, as
    ImageFolder's training folders do, so a validation list without some class still gets the same labels); else,
    for indices, data.num_classes or the largest index of `train_list` + 1, named by their numbers. `train_images`:
    the folder of the training list's paths (for its header check)."""
    list_path = Path(list_path)
    rows = _read_csv_list(list_path, str(image_root))
    names = _read_class_names(Path(categories)) if categories else None
    if names is not None:
        check_num_classes(len(names), num_classes, str(categories))
    by_name = any(not _is_index(label) for _, label, _ in rows)
    if by_name and any(_is_index(label) for _, label, _ in rows):
        lineno, label = next((n, label) for _, label, n in rows if _is_index(label))
        raise DatasetError(f"{list_path}: line {lineno}: label {label} is an index but other lines name classes; "
                           "use one or the other")
    if names is None:
        train_rows = rows if train_list is None or Path(train_list) == list_path else \
            _read_csv_list(Path(train_list), str(train_images or image_root))
        if any(not _is_index(label) for _, label, _ in train_rows):
            names = sorted({label for _, label, _ in train_rows})
            check_num_classes(len(names), num_classes, f"{train_list or list_path} (its class names)")
        else:
            names = [str(i) for i in range(num_classes or max(int(label) for _, label, _ in train_rows) + 1)]
    index_of = {name: i for i, name in enumerate(names)}
    labels = []
    for _, label, lineno in rows:
        if by_name:
            if label not in index_of:
                raise DatasetError(f"{list_path}: line {lineno}: class {label!r} is not one of the "
                                   f"{len(names)} classes ({categories or train_list or list_path})")
            labels.append(index_of[label])
        else:
            if not 0 <= int(label) < len(names):
                raise DatasetError(f"{list_path}: line {lineno}: label {label} out of range [0, {len(names)})")
            labels.append(int(label))
    return LabeledImages(image_root, [p for p, _, _ in rows], labels, names, str(list_path), "line",
                         [n for _, _, n in rows], transform)


# -- ImageFolder ---------------------------------------------------------------------------------------------------
def image_folder_classes(folder: Path, num_classes: Optional[int] = None):
    """(class names, {name: label}) of an ImageFolder tree, one line naming the folder when it has none."""
    if not folder.is_dir():
        raise MissingFileError(f"{folder}: image folder not found ({ROOT_HINT})")
    try:
        classes, class_to_idx = find_classes(folder)
    except FileNotFoundError:
        raise DatasetError(f"{folder}: no class sub-folders (the ImageFolder layout has one folder of images per "
                           "class)") from None
    check_num_classes(len(classes), num_classes, str(folder))
    return classes, class_to_idx


def image_folder_dataset(folder, num_classes: Optional[int] = None, transform=None) -> LabeledImages:
    """A folder with one sub-folder of images per class (torchvision ImageFolder layout, e.g. ImageNet)."""
    folder = Path(folder)
    classes, class_to_idx = image_folder_classes(folder, num_classes)
    try:
        samples = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exc:  # a class folder without images
        raise DatasetError(f"{folder}: {_one_line(exc)}") from None
    paths = [os.path.relpath(p, folder) for p, _ in samples]
    # The scan found these files: no second check.
    return LabeledImages(str(folder), paths, [c for _, c in samples], classes, str(folder), transform=transform,
                         check_files=False)


# -- from the config -----------------------------------------------------------------------------------------------
def split_index(data_cfg, split: str) -> Path:
    """The `train` or `val` split's class-folder tree, annotation json or list file: data.<split>_split, under
    data.root unless absolute."""
    return Path(data_cfg.root) / str(data_cfg[f"{split}_split"])


def build_dataset(data_cfg, split: str, transform=None) -> LabeledImages:
    """The `train` or `val` split described by the `data:` config section."""
    if data_cfg.format not in FORMATS:
        raise DatasetError(f"data.format '{data_cfg.format}' is not one of {', '.join(FORMATS)}")
    root = Path(data_cfg.root)
    index = split_index(data_cfg, split)
    images = root / str(data_cfg[f"{split}_images"] or "")
    num_classes = data_cfg.num_classes
    if data_cfg.format == "imagefolder":
        return image_folder_dataset(index, num_classes, transform)
    if data_cfg.format == "inat":
        return inat_dataset(index, images, num_classes, transform)
    categories = root / str(data_cfg.categories) if data_cfg.categories else None
    if data_cfg.format == "csv":
        return csv_dataset(index, images, num_classes, categories, split_index(data_cfg, "train"),
                           root / str(data_cfg.train_images or ""), transform)
    return places_dataset(index, images, num_classes, categories, transform)


_TIMM_POSTERIZE = auto_augment.posterize


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize op, also for 0 bits. RandAugment's `inc1` policy asks for 0 bits at magnitude 10 (reached
    when m9 + mstd0.5 samples >= 10, about 2% of its draws): the Pillow of the official code returned a black image,
    current Pillow raises "bits must be between or equal to 1 and 8", which would stop a training run at random."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # posterize to 0 bits = every channel value & 0
    return _TIMM_POSTERIZE(img, bits_to_keep, **kwargs)


try:
    ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
except ValueError:  # this Pillow refuses 0 bits: route timm's posterize ops through the wrapper
    for _name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[_name] = _posterize


def build_transform(cfg, is_train: bool):
    """timm transforms as the official recipe: train = RandomResizedCrop (bicubic) + flip [+ RandAugment + random
    erasing]; eval = bicubic resize to input / crop_pct + center crop (crop_pct 224/256 up to 224 px, else 1.0)."""
    size = int(cfg.model.img_size)
    if not is_train:
        crop_pct = cfg.eval.crop_pct if cfg.eval.crop_pct is not None else (224 / 256 if size <= 224 else 1.0)
        return create_transform(size, is_training=False, interpolation="bicubic", crop_pct=float(crop_pct))
    aug = cfg.aug
    return create_transform(size, is_training=True, interpolation="bicubic", scale=tuple(aug.scale),
                            auto_augment=aug.auto_augment or None, color_jitter=aug.color_jitter,
                            re_prob=float(aug.reprob), re_mode=aug.remode, re_count=int(aug.recount))


# -- demo data -----------------------------------------------------------------------------------------------------
def write_demo_data(root, n_train: int = 2000, n_val: int = 400, size: int = 64, seed: int = 0) -> Path:
    """Synthetic classification set in the iNaturalist format: `train.json` / `val.json` + PNGs under images/.

    Each image is one demo shape on a textured background, labelled with its kind (6 classes). Object-centric like
    iNaturalist photos: a large shape (radius 25-45 % of the image) so that it covers many patches. Written to a
    temporary folder and renamed, so an interrupted run never leaves a half-written set.
    """
    root = Path(root)
    tmp = temporary_path(root)
    scenes = render_scenes(n_train + n_val, size=size, seed=seed, max_shapes=1, radius=(0.25, 0.45))
    categories = [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    next_id = 0
    for split, count in (("train", n_train), ("val", n_val)):
        images, annotations = [], []
        for _ in range(count):
            image, instances = next(scenes)
            label = instances[0].category  # one shape, never below min_area at this radius
            file_name = f"images/{split}/{SHAPES[label]}/{next_id:05d}.png"
            (tmp / file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp / file_name)
            images.append({"id": next_id, "file_name": file_name, "width": size, "height": size})
            annotations.append({"id": next_id, "image_id": next_id, "category_id": label})
            next_id += 1
        (tmp / f"{split}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    return publish_folder(tmp, root)


def ensure_demo_data(root, **kwargs) -> Path:
    """The demo set at `root`, written on first use."""
    root = Path(root)
    if not (root / "val.json").is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing the demo classification data to {root}")
        write_demo_data(root, **kwargs)
    return root
