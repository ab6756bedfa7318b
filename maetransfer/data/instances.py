"""Instance geometry shared by the COCO pipeline and the detector, as detectron2 computes it (structures/masks.py,
data/transforms): polygons and bitmasks, the boxes around them, and PIL's resampling of images and masks."""
from typing import List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_utils
import torch
from PIL import Image

Polygons = List[np.ndarray]  # one instance: flat float64 arrays [x0, y0, x1, y1, ...] of 3 or more points each


def polygons_to_bitmask(polygons: Polygons, height: int, width: int) -> np.ndarray:
    """Rasterise one instance's polygons (pycocotools, merged) into a (height, width) bool mask."""
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects([np.asarray(p, dtype=np.float64) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def polygon_boxes(instances: Sequence[Polygons]) -> torch.Tensor:
    """detectron2 `PolygonMasks.get_bounding_boxes`: per instance the min/max over its polygon points in float32
    (the max starts at 0, the min at +inf: an instance without polygons gets an empty box)."""
    boxes = torch.zeros(len(instances), 4, dtype=torch.float32)
    for i, polygons in enumerate(instances):
        low = torch.full((2,), float("inf"))
        high = torch.zeros(2)
        for p in polygons:
            coords = torch.from_numpy(np.asarray(p)).view(-1, 2).float()
            low = torch.minimum(low, coords.min(dim=0).values)
            high = torch.maximum(high, coords.max(dim=0).values)
        boxes[i, :2], boxes[i, 2:] = low, high
    return boxes


def bitmask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """detectron2 `BitMasks.get_bounding_boxes`: (N, H, W) masks -> (N, 4) xyxy boxes enclosing the pixels, right and
    bottom edges exclusive (pycocotools' toBbox extent); all zeros for an empty mask."""
    h, w = masks.shape[1:]
    x_any, y_any = masks.any(dim=1).bool(), masks.any(dim=2).bool()  # uint8 masks give uint8 any()
    xs, ys = torch.arange(w), torch.arange(h)
    boxes = torch.stack([torch.where(x_any, xs, w).amin(dim=1), torch.where(y_any, ys, h).amin(dim=1),
                         torch.where(x_any, xs, -1).amax(dim=1) + 1, torch.where(y_any, ys, -1).amax(dim=1) + 1], dim=1)
    return torch.where(x_any.any(dim=1)[:, None], boxes, 0).float()


def resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, h, w) uint8 with PIL's bilinear filter (antialiased when shrinking), the resize
    detectron2's ResizeTransform applies to uint8 images; torch's antialiased interpolation rounds differently."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    pil = Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())
    resized = np.asarray(pil.resize((int(size[1]), int(size[0])), Image.BILINEAR))
    return torch.from_numpy(resized.copy()).permute(2, 0, 1)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each of `dst` output pixels in PIL's NEAREST resize of `src` pixels (-1: outside, PIL fills
    0). PIL accumulates the position s/2 + k s in double precision and truncates (ImagingScaleAffine); the exact
    centre rule floor((k + 0.5) s) differs from it in rare pixels, so the accumulation is reproduced."""
    step = src / dst
    steps = np.full(dst, step)
    steps[0] = step * 0.5
    index = np.floor(np.add.accumulate(steps)).astype(np.int64)
    return np.where(index < src, index, -1)
