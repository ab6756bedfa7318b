"""COCO instance segmentation data: the 2017 layout read through pycocotools, ViTDet's large-scale jitter (LSJ) and
test resize with detectron2's geometry, and the synthetic demo set written in the same on-disk format.

Layout under a root:  annotations/instances_{split}.json  and  {split}/<file_name>  (split = train2017, val2017).
Targets follow detectron2's conventions: boxes (N, 4) xyxy float in pixels, labels (N,) int64 in 0..K-1 (sorted
category ids; the box head's background is K), image_id (the COCO id) and masks: polygons when every instance of
the image is given as polygons (a list of N instances, each a list of flat float64 [x0, y0, x1, y1, ...] arrays:
exact geometry and no full-image bitmask per instance), else an (N, H, W) uint8 bitmask tensor (RLE annotations;
polygons of such images are rasterised, detectron2's "bitmask" mask format).
"""
import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_utils
import shapely.geometry
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.io import ImageReadMode, decode_image

from ..errors import InputError
from ..files import write_text
from .demo import SHAPES, render_scenes
from .images import MissingFileError, find_missing, print_warning, read_annotation_json
from .instances import Polygons, bitmask_boxes, nearest_indices, polygon_boxes, polygons_to_bitmask, resize_image


# The 80 COCO 2017 object categories as (id, name), in id order = the contiguous labels 0..79 of every detector
# trained on COCO (detectron2's ViTDet model zoo included)
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
    (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"),
    (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"),
    (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"),
    (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"),
    (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"),
    (90, "toothbrush"))


class CocoFormatError(InputError, ValueError):
    """An annotation file is not usable; the message is one line naming the file."""


def load_coco_json(path) -> COCO:
    """Read a COCO instances json into a pycocotools `COCO` object with one-line errors for bad files (pycocotools
    itself would print and then fail with an assertion or a KeyError deep inside)."""
    path = Path(path)
    data = read_annotation_json(path, error=CocoFormatError)
    for kind, keys in (("images", ("id", "file_name", "height", "width")),
                       ("annotations", ("id", "image_id", "category_id", "bbox")), ("categories", ("id", "name"))):
        for i, entry in enumerate(data[kind]):
            absent = [k for k in keys if not isinstance(entry, dict) or k not in entry]
            if absent:
                raise CocoFormatError(f"{path}: {kind}[{i}] lacks {', '.join(absent)}")
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in image_ids:
            raise CocoFormatError(f"{path}: annotations[{i}] refers to unknown image_id {ann['image_id']}")
        if ann["category_id"] not in category_ids:
            raise CocoFormatError(f"{path}: annotations[{i}] refers to unknown category_id {ann['category_id']}")
    coco = COCO()
    coco.dataset = data
    with redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def valid_polygons(segm) -> Optional[List[np.ndarray]]:
    """The usable polygons of a polygon segmentation (an even number of >= 6 coordinates, as detectron2's
    load_coco_json keeps) as float64 arrays; None when `segm` is no polygon list or none is usable (the instance is
    dropped, as in detectron2)."""
    if not isinstance(segm, list):
        return None
    polygons = [np.asarray(p, dtype=np.float64) for p in segm if len(p) >= 6 and len(p) % 2 == 0]
    return polygons or None


def annotation_to_rle(segm, height: int, width: int) -> Optional[dict]:
    """A COCO segmentation (polygons, uncompressed RLE or compressed RLE) -> compressed RLE; None when it holds no
    valid polygon."""
    if isinstance(segm, list):
        polygons = valid_polygons(segm)
        return None if polygons is None else mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, height, width)
    if isinstance(segm, dict) and "counts" in segm:
        return segm
    return None


# Why a non-crowd annotation gives no training instance (CocoDetection.load_target skips it).
MALFORMED_BOX = "bbox is not 4 numbers"
EMPTY_BOX = "box width or height <= 0"
NO_SEGMENTATION = "no segmentation"
NO_POLYGON = "no polygon of 3 or more points"
MALFORMED_SEGMENTATION = "segmentation neither a polygon list nor an RLE of the image's size"


def drop_reason(ann: dict, height: int, width: int) -> Optional[str]:
    """Why the non-crowd annotation `ann` of a height x width image is not used as a training instance; None when it
    is. Polygon lists keep detectron2's rule (polygons of fewer than 3 points are ignored, an instance left without
    one is dropped); a box of zero or negative size is dropped; a box that is not 4 numbers and an RLE of another
    size than its image, which would stop the run later, are dropped. Only structural checks, fast enough for COCO's
    860k annotations: the coordinates themselves are read when the image is loaded."""
    bbox = ann["bbox"]
    try:
        x, y, w, h = bbox
        x, y = x + 0.0, y + 0.0  # fails for anything but numbers, as load_target's box arithmetic would
        if w <= 0 or h <= 0:
            return EMPTY_BOX
    except (TypeError, ValueError):
        return MALFORMED_BOX
    segm = ann.get("segmentation")
    if type(segm) is list:
        for polygon in segm:
            if type(polygon) is not list:
                return MALFORMED_SEGMENTATION
        for polygon in segm:
            if len(polygon) >= 6 and len(polygon) % 2 == 0:
                return None
        return NO_POLYGON
    if type(segm) is dict:
        usable = isinstance(segm.get("counts"), (list, str)) and segm.get("size") == [height, width]
        return None if usable else MALFORMED_SEGMENTATION
    return NO_SEGMENTATION if segm is None else MALFORMED_SEGMENTATION


def has_mask(ann: dict) -> bool:
    """Whether an annotation gives a mask at all: a boxes-only annotation has no 'segmentation' or an empty one
    (detectron2's load_coco_json keeps no segmentation for either)."""
    return bool(ann.get("segmentation"))


def box_outside(bbox: Sequence[float], height: int, width: int) -> bool:
    """Whether an (x, y, w, h) box lies wholly outside its image (one crossing the border is normal in COCO)."""
    x, y, w, h = bbox
    return x >= width or y >= height or x + w <= 0 or y + h <= 0


class CocoDetection(torch.utils.data.Dataset):
    """Images and instance targets of one COCO split.

    Crowd annotations never become training targets (COCOeval handles them at evaluation time, as in detectron2);
    annotations that give no instance (`drop_reason`) are counted per reason and reported in one warning line.
    `filter_empty` drops images without a usable non-crowd instance (detectron2's default for training); evaluation
    keeps every image. Category ids map to contiguous labels 0..K-1 in sorted id order (detectron2's contiguous ids);
    `category_ids[label]` maps back. `transforms(image, target)` runs on (3, H, W) uint8 and the target dict
    (`LargeScaleJitter` for training, `ResizeShortestEdge` for test).

    Checked when built: the split lists images (and, with `filter_empty`, some image keeps an instance), it is not
    boxes-only (with `every_mask`, used for evaluation: every annotation has a mask; `_check_masks`), and every
    image it uses exists under `image_dir` (one directory listing, not a stat per file); each failure is one
    CocoFormatError / MissingFileError line naming the json.
    """

    def __init__(self, image_dir, ann_file, transforms=None, filter_empty: bool = False, every_mask: bool = False):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.coco = load_coco_json(ann_file)
        self.transforms = transforms
        self.category_ids = sorted(self.coco.cats)
        self.category_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {cat_id: i for i, cat_id in enumerate(self.category_ids)}
        if not self.coco.imgs:
            raise CocoFormatError(f"{self.ann_file}: lists no images")
        with_instances = self._count_annotations()
        self._check_masks(every_mask)
        ids = sorted(self.coco.imgs)
        if filter_empty:
            ids = [i for i in ids if i in with_instances]
            if not ids:
                raise CocoFormatError(f"{self.ann_file}: no training image left: {self._why_no_instance()}, and "
                                      "filter_empty (data.filter_empty) leaves out images without a usable instance")
        if self.dropped or self.outside:
            print_warning(f"{self.ann_file}: {self._annotation_problems()}")
        self.ids = ids
        self._check_images_exist()

    def _count_annotations(self) -> set:
        """Count the non-crowd annotations that give no instance, per reason, and the boxes wholly outside their
        image; returns the ids of images with a usable instance."""
        self.non_crowd, self.outside = 0, 0
        self.dropped: Dict[str, int] = {}
        with_instances = set()
        for ann in self.coco.anns.values():
            if ann.get("iscrowd", 0):
                continue
            self.non_crowd += 1
            info = self.coco.imgs[ann["image_id"]]
            reason = drop_reason(ann, info["height"], info["width"])
            if reason is None:
                with_instances.add(ann["image_id"])
                self.outside += box_outside(ann["bbox"], info["height"], info["width"])
            else:
                self.dropped[reason] = self.dropped.get(reason, 0) + 1
        return with_instances

    def _check_masks(self, every: bool) -> None:
        """Refuse annotations without a mask where the run cannot go on without one: a set whose non-crowd
        annotations all lack one (boxes only: nothing would train the mask head, and detectron2 with masks on fails
        on such annotations too) and, with `every` (the evaluation split), any annotation without one (COCOeval's
        segm reads the mask of every ground-truth instance, crowd regions included, and would stop with a KeyError
        after the whole inference). A few mask-less annotations of a training set are dropped and counted instead."""
        annotations = self.coco.dataset["annotations"]
        first = next((a for a in annotations if not has_mask(a) and (every or not a.get("iscrowd", 0))), None)
        if first is None:
            return
        without = sum(not has_mask(a) for a in annotations if not a.get("iscrowd", 0))
        if not every and without < self.non_crowd:
            return
        scope = "" if every else f", as all {self.non_crowd} non-crowd annotations"
        raise CocoFormatError(
            f"{self.ann_file}: annotation id {first['id']} (image {self.coco.imgs[first['image_id']]['file_name']}) "
            f"has no mask{scope}: Mask R-CNN trains and evaluates a mask per instance (detectron2 with masks on "
            f"also needs one); add 'segmentation' polygons or RLE, or for a boxes-only set each box as a 4-corner "
            f"polygon [[x, y, x+w, y, x+w, y+h, x, y+h]]")

    def _annotation_problems(self) -> str:
        parts = []
        if self.dropped:
            counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items()))
            parts.append(f"{sum(self.dropped.values())} of {self.non_crowd} non-crowd annotations give no training "
                         f"instance ({counts})")
        if self.outside:
            parts.append(f"{self.outside} boxes lie wholly outside their image (kept: training boxes come from the "
                         "masks)")
        return "; ".join(parts)

    def _why_no_instance(self) -> str:
        if not self.coco.anns:
            return "it has no annotations"
        if not self.non_crowd:
            return f"its {len(self.coco.anns)} annotations are all crowd regions"
        return self._annotation_problems()

    def _check_images_exist(self) -> None:
        if not self.image_dir.is_dir():
            raise MissingFileError(f"{self.image_dir}: image folder not found (the images of {self.ann_file})")
        names = [str(self.coco.imgs[i]["file_name"]) for i in self.ids]
        missing, first = find_missing(self.image_dir, names)
        if missing:
            raise MissingFileError(f"{self.ann_file}: {missing} of the {len(names)} images used are missing, "
                                   f"first {self.image_dir / names[first]}")

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise MissingFileError(f"{path}: image file not found (listed in {self.ann_file})")
        try:
            # EXIF orientation applied, as detectron2 reads images.
            image = decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError as exc:
            raise CocoFormatError(f"{path}: cannot decode image ({' '.join(str(exc).split())})") from None
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            raise CocoFormatError(f"{path}: image is {image.shape[2]}x{image.shape[1]} but {self.ann_file} says "
                                  f"{info['width']}x{info['height']}")
        return image

    def load_target(self, image_id: int) -> Dict:
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        boxes, labels, segms = [], [], []
        for ann in self.coco.imgToAnns[image_id]:
            if ann.get("iscrowd", 0) or drop_reason(ann, h, w) is not None:
                continue
            segm = ann["segmentation"]
            try:
                instance = valid_polygons(segm) if isinstance(segm, list) else annotation_to_rle(segm, h, w)
            except (TypeError, ValueError):  # e.g. a polygon holding strings or nested lists
                raise CocoFormatError(f"{self.ann_file}: annotation id {ann['id']} (image {info['file_name']}) has "
                                      "a polygon that is not a list of numbers") from None
            x, y, bw, bh = ann["bbox"]
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.label_of[ann["category_id"]])
            segms.append(instance)
        if all(isinstance(sg, list) for sg in segms):
            masks = segms
        else:
            masks = torch.from_numpy(np.stack([
                polygons_to_bitmask(sg, h, w).astype(np.uint8) if isinstance(sg, list) else mask_utils.decode(sg)
                for sg in segms]))
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": masks,
            "image_id": torch.tensor(image_id),
        }

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        image_id = self.ids[index]
        image, target = self.load_image(image_id), self.load_target(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class LargeScaleJitter:
    """ViTDet's training augmentation, as detectron2's DatasetMapper with [RandomFlip, ResizeScale(0.1, 2.0, size,
    size), FixedSizeCrop(size, pad=False)] and recompute_boxes: the same NumPy random draws in the same order, the
    image resized with PIL (bilinear, antialiased when shrinking) on uint8, the crop offset rounded half to even.
    Polygons are flipped, scaled and cut to the crop window with shapely (after buffer(0), as fvcore's
    CropTransform); bitmasks follow PIL's nearest resize of only the crop window (memory stays at the crop size).
    Boxes are recomputed from the cropped instances and instances left empty are dropped."""

    def __init__(self, size: int = 1024, scale_range: Sequence[float] = (0.1, 2.0), flip_prob: float = 0.5):
        self.size = size
        self.scale_range = tuple(scale_range)
        self.flip_prob = flip_prob

    def __call__(self, image: torch.Tensor, target: Dict):
        h, w = image.shape[1:]
        masks = target["masks"]
        polygons = not isinstance(masks, torch.Tensor)
        if np.random.uniform(0.0, 1.0) < self.flip_prob:
            image = image.flip(-1)
            masks = [[_flip_x(p, w) for p in inst] for inst in masks] if polygons else masks.flip(-1)
        scale = np.random.uniform(*self.scale_range)
        target_size = np.multiply((self.size, self.size), scale)
        factor = np.minimum(target_size[0] / h, target_size[1] / w)
        new_h, new_w = (max(1, int(v)) for v in np.round(np.multiply((h, w), factor)))
        max_offset = np.maximum(np.subtract((new_h, new_w), (self.size, self.size)), 0)
        top, left = (int(v) for v in np.round(np.multiply(max_offset, np.random.uniform(0.0, 1.0))))

        image = resize_image(image, (new_h, new_w))[:, top:top + self.size, left:left + self.size]
        if polygons:
            masks = [_crop_polygons([_scale(p, new_w / w, new_h / h) for p in inst], left, top, self.size)
                     for inst in masks]
            boxes = polygon_boxes(masks)
            nonempty = torch.tensor([len(inst) > 0 for inst in masks], dtype=torch.bool)
        else:
            rows = nearest_indices(h, new_h)[top:top + self.size]
            cols = nearest_indices(w, new_w)[left:left + self.size]
            padded = torch.nn.functional.pad(masks, (0, 1, 0, 1))  # index -1 reads this zero row / column
            masks = padded[:, rows][:, :, cols]
            boxes = bitmask_boxes(masks)
            nonempty = masks.flatten(1).amax(dim=1) > 0
        size = boxes[:, 2:] - boxes[:, :2]
        keep = nonempty & (size > 1e-5).all(dim=1)  # detectron2 filter_empty_instances
        masks = [m for m, k in zip(masks, keep.tolist()) if k] if polygons else masks[keep]
        return image, dict(target, boxes=boxes[keep], labels=target["labels"][keep], masks=masks)


def _flip_x(polygon: np.ndarray, width: int) -> np.ndarray:
    flipped = polygon.copy()
    flipped[0::2] = width - flipped[0::2]
    return flipped


def _scale(polygon: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    scaled = polygon.copy()
    scaled[0::2] = scaled[0::2] * scale_x
    scaled[1::2] = scaled[1::2] * scale_y
    return scaled


def _crop_polygons(polygons: Polygons, left: int, top: int, size: int) -> Polygons:
    """Polygons of one instance cut to the window [left, left + size) x [top, top + size) and moved to its corner.
    An instance can split into several polygons or vanish; lines and points left by the cut are dropped."""
    window = shapely.geometry.box(left, top, left + size, top + size).buffer(0.0)
    cropped = []
    for polygon in polygons:
        shape = shapely.geometry.Polygon(polygon.reshape(-1, 2)).buffer(0.0)
        if not shape.is_valid:
            continue
        part = shape.intersection(window)
        if part.is_empty:
            continue
        for piece in getattr(part, "geoms", [part]):
            if isinstance(piece, shapely.geometry.Polygon) and piece.is_valid:
                coords = np.asarray(piece.exterior.coords)[:-1]  # shapely repeats the first vertex at the end
                coords[:, 0] -= left
                coords[:, 1] -= top
                cropped.append(coords.reshape(-1))
    return cropped


class ResizeShortestEdge:
    """detectron2's test resize ResizeShortestEdge(short, max_size): the shorter side to `short` unless the longer
    would pass `max_size`, sizes rounded as int(x + 0.5), PIL bilinear on uint8. Only the image changes: evaluation
    maps the predictions back to the original size and reads the ground truth from the json."""

    def __init__(self, short: int, max_size: int):
        self.short, self.max_size = short, max_size

    def output_size(self, h: int, w: int) -> Tuple[int, int]:
        size = self.short * 1.0
        scale = size / min(h, w)
        new_h, new_w = (size, scale * w) if h < w else (scale * h, size)
        if max(new_h, new_w) > self.max_size:
            scale = self.max_size * 1.0 / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)

    def __call__(self, image: torch.Tensor, target: Dict):
        return resize_image(image, self.output_size(*image.shape[1:])), target


def collate_detection(batch):
    """Lists of images and targets (sizes differ; the model pads)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


# -- demo data -------------------------------------------------------------------------------------------------------
def write_demo_coco(root, num_train: int = 300, num_val: int = 50, size: int = 128, seed: int = 0,
                    max_shapes: int = 4) -> Path:
    """Write synthetic scenes (maetransfer.data.demo) as a COCO 2017-layout data set under `root` and return it.

    Six categories (the shape kinds) with non-contiguous ids 1, 3, 5, ... so the id <-> label mapping is exercised.
    Segmentations are compressed RLE for the training split and uncompressed RLE (counts as a list) for the
    validation split, two of the forms real COCO files hold. Existing files are kept (the set is deterministic).
    """
    root = Path(root)
    categories = [{"id": 2 * i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    for split, count, split_seed in (("train2017", num_train, seed), ("val2017", num_val, seed + 1)):
        ann_path = root / "annotations" / f"instances_{split}.json"
        if ann_path.is_file():
            continue
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index, (pixels, instances) in enumerate(render_scenes(count, size, seed=split_seed,
                                                                  max_shapes=max_shapes)):
            image_id = index + 1
            file_name = f"{image_id:012d}.png"  # lossless: the masks must match the pixels exactly
            Image.fromarray(pixels).save(root / split / file_name)
            images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            for inst in instances:
                rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
                if split == "train2017":
                    segm = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
                else:
                    segm = {"size": rle["size"], "counts": _uncompressed_counts(inst.mask)}
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": categories[inst.category]["id"],
                    "segmentation": segm, "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0})
        write_text(ann_path, json.dumps({"info": {"description": "maetransfer synthetic demo scenes"}, "images": images,
                                         "annotations": annotations, "categories": categories}))
    return root


def _uncompressed_counts(mask: np.ndarray) -> List[int]:
    """COCO's uncompressed RLE counts: run lengths over the column-major flattened mask, starting with zeros."""
    flat = np.asfortranarray(mask.astype(np.uint8)).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs
