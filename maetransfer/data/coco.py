"""COCO instance segmentation data: the 2017 layout read through pycocotools, ViTDet's large-scale jitter (LSJ) on
tensors, and the synthetic demo set written in the same on-disk format.

Layout under a root:  annotations/instances_{split}.json  and  {split}/<file_name>  (split = train2017, val2017).
Targets follow torchvision's detection convention: boxes (N, 4) xyxy float in pixels, labels (N,) int64 in 1..K
(0 is background), masks (N, H, W) uint8, plus image_id (the COCO id).
"""
import io
import json
import os
from contextlib import redirect_stdout
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools.coco import COCO
from torchvision.io import ImageReadMode, decode_image
from torchvision.ops import masks_to_boxes

from .demo import SHAPES, render_scenes
from .images import read_annotation_json


class CocoFormatError(ValueError):
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


def annotation_to_rle(segm, height: int, width: int) -> Optional[dict]:
    """A COCO segmentation (polygons, uncompressed RLE or compressed RLE) -> compressed RLE; None when it holds no
    valid polygon (fewer than 3 points, which detectron2 drops too)."""
    if isinstance(segm, list):
        polygons = [p for p in segm if len(p) >= 6]
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, height, width)
    if isinstance(segm, dict) and "counts" in segm:
        return segm
    return None


class CocoDetection(torch.utils.data.Dataset):
    """Images and instance targets of one COCO split.

    Crowd annotations never become training targets (COCOeval handles them at evaluation time, as in detectron2);
    `filter_empty` drops images without a usable non-crowd instance (detectron2's default for training); evaluation
    keeps every image. Category ids map to contiguous labels 1..K in sorted id order; `category_ids[label - 1]` maps
    back. `transforms(image, target)` runs on (3, H, W) uint8 and the target dict (e.g. `LargeScaleJitter`).
    """

    def __init__(self, image_dir, ann_file, transforms=None, filter_empty: bool = False):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.coco = load_coco_json(ann_file)
        self.transforms = transforms
        self.category_ids = sorted(self.coco.cats)
        self.category_names = [self.coco.cats[c]["name"] for c in self.category_ids]
        self.label_of = {cat_id: i + 1 for i, cat_id in enumerate(self.category_ids)}
        ids = sorted(self.coco.imgs)
        if filter_empty:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self.coco.imgToAnns[i])]
        self.ids = ids

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file not found (listed in {self.ann_file})")
        try:
            # EXIF orientation applied, as detectron2 reads images.
            image = decode_image(str(path), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        except RuntimeError as exc:
            raise CocoFormatError(f"{path}: cannot decode image ({' '.join(str(exc).split())})") from None
        if tuple(image.shape[1:]) != (info["height"], info["width"]):
            raise CocoFormatError(f"{path}: image is {image.shape[2]}x{image.shape[1]} but {self.ann_file} says "
                                  f"{info['width']}x{info['height']}")
        return image

    def load_target(self, image_id: int) -> Dict[str, torch.Tensor]:
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        boxes, labels, masks = [], [], []
        for ann in self.coco.imgToAnns[image_id]:
            if ann.get("iscrowd", 0):
                continue
            rle = annotation_to_rle(ann.get("segmentation"), h, w)
            x, y, bw, bh = ann["bbox"]
            if rle is None or bw <= 0 or bh <= 0:
                continue
            boxes.append([x, y, x + bw, y + bh])
            labels.append(self.label_of[ann["category_id"]])
            masks.append(mask_utils.decode(rle))
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
            "image_id": torch.tensor(image_id),
        }

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        image_id = self.ids[index]
        image, target = self.load_image(image_id), self.load_target(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-empty masks -> (N, 4) xyxy boxes enclosing the pixels, right/bottom edges exclusive (the
    extent pycocotools' toBbox and detectron2's BitMasks give; torchvision's masks_to_boxes is inclusive)."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    return masks_to_boxes(masks.bool()).float() + torch.tensor([0.0, 0.0, 1.0, 1.0])


class LargeScaleJitter:
    """ViTDet's training augmentation on tensors: horizontal flip, resize so the image fits a square of
    `size * U(scale_range)` (detectron2 ResizeScale), then a random crop of at most `size` x `size` without padding
    (FixedSizeCrop pad=False; batches are padded later). Boxes are recomputed from the cropped masks and instances
    left with no pixels are dropped. Returns a float32 image in 0..255."""

    def __init__(self, size: int = 1024, scale_range: Sequence[float] = (0.1, 2.0), flip_prob: float = 0.5):
        self.size = size
        self.scale_range = tuple(scale_range)
        self.flip_prob = flip_prob

    def __call__(self, image: torch.Tensor, target: Dict[str, torch.Tensor]):
        masks = target["masks"]
        if torch.rand(()) < self.flip_prob:
            image, masks = image.flip(-1), masks.flip(-1)
        h, w = image.shape[1:]
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * torch.rand(()).item()
        factor = min(scale * self.size / h, scale * self.size / w)
        new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
        crop_h, crop_w = min(self.size, new_h), min(self.size, new_w)
        # One uniform draw for both axes, as detectron2's FixedSizeCrop.
        u = torch.rand(()).item()
        top, left = round((new_h - crop_h) * u), round((new_w - crop_w) * u)

        # antialias matches the PIL bilinear resize detectron2 applies to uint8 images.
        image = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        image = image[:, top:top + crop_h, left:left + crop_w].clamp_(0, 255)
        # Nearest-neighbour resize of only the cropped window (torch 'nearest' index rule): memory stays at the crop
        # size even when a 2x scale would make full-size masks of many instances large.
        rows = ((torch.arange(top, top + crop_h) * (h / new_h)).floor().long()).clamp_(max=h - 1)
        cols = ((torch.arange(left, left + crop_w) * (w / new_w)).floor().long()).clamp_(max=w - 1)
        masks = masks[:, rows][:, :, cols]
        keep = masks.flatten(1).amax(dim=1) > 0
        masks = masks[keep]
        target = dict(target, masks=masks, labels=target["labels"][keep], boxes=boxes_from_masks(masks))
        return image, target


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
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ann_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"info": {"description": "maetransfer synthetic demo scenes"}, "images": images,
                                   "annotations": annotations, "categories": categories}))
        os.replace(tmp, ann_path)
    return root


def _uncompressed_counts(mask: np.ndarray) -> List[int]:
    """COCO's uncompressed RLE counts: run lengths over the column-major flattened mask, starting with zeros."""
    flat = np.asfortranarray(mask.astype(np.uint8)).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs
