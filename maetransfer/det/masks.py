"""Instance-mask geometry of detectron2 (structures/masks.py, layers/mask_ops.py): the 28x28 training targets of the
mask head and the paste of predicted masks into the image.

Training targets: a polygon instance is rasterised inside each proposal box (polygons shifted to the box corner and
scaled to M x M, then pycocotools); a bitmask instance is cropped with RoIAlign (aligned=True, sampling adaptive) and
thresholded at 0.5. Paste: each M x M probability map is resampled with `grid_sample` at the centres of the image
pixels its (sub-pixel) box covers, then thresholded. torchvision instead pastes into the box rounded to whole pixels
and padded by one pixel, which makes every mask about a pixel too large; no library does the sub-pixel version, so it
is written here.
"""
import copy
import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ..data.instances import Polygons, polygons_to_bitmask


def rasterize_polygons_within_box(polygons: Polygons, box: np.ndarray, mask_size: int) -> torch.Tensor:
    """detectron2 `rasterize_polygons_within_box`: the (mask_size, mask_size) bool target of a polygon instance in
    `box` (a float32 xyxy array; the same dtype arithmetic as detectron2 so the targets are identical)."""
    w, h = box[2] - box[0], box[3] - box[1]
    polygons = copy.deepcopy(polygons)
    for p in polygons:
        p[0::2] = p[0::2] - box[0]
        p[1::2] = p[1::2] - box[1]
    ratio_h = mask_size / max(h, 0.1)  # max(): no division by a vanishing box
    ratio_w = mask_size / max(w, 0.1)
    for p in polygons:
        if ratio_h == ratio_w:
            p *= ratio_h
        else:
            p[0::2] *= ratio_w
            p[1::2] *= ratio_h
    return torch.from_numpy(polygons_to_bitmask(polygons, mask_size, mask_size))


def mask_targets(masks, matched: torch.Tensor, boxes: torch.Tensor, mask_size: int) -> torch.Tensor:
    """Bool (R, mask_size, mask_size) targets of R boxes (R, 4), box r for ground-truth instance `matched[r]` of
    `masks` (a list of polygon instances or an (M, H, W) bitmask tensor). Bitmasks are cropped straight from the M
    instances, RoIAlign's batch index being the matched instance: the same values as cropping R indexed copies, without
    R full-image masks in memory."""
    if boxes.shape[0] == 0:
        return torch.zeros((0, mask_size, mask_size), dtype=torch.bool, device=boxes.device)
    if isinstance(masks, torch.Tensor):
        rois = torch.cat([matched.to(boxes.device, boxes.dtype)[:, None], boxes], dim=1)
        crops = roi_align(masks.to(boxes.device, torch.float32)[:, None], rois.float(), (mask_size, mask_size),
                          spatial_scale=1.0, sampling_ratio=0, aligned=True)
        return crops[:, 0] >= 0.5
    boxes_np = boxes.detach().cpu().numpy()
    return torch.stack([rasterize_polygons_within_box(masks[i], b, mask_size)
                        for i, b in zip(matched.tolist(), boxes_np)]).to(boxes.device)


def _sample_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: Tuple[int, int],
                  around_boxes: bool) -> Tuple[torch.Tensor, Tuple[slice, slice]]:
    """detectron2 `_do_paste_mask`: the (N, M, M) masks bilinearly sampled (`grid_sample`, align_corners=False, zeros
    outside) at the centres of the image pixels, either over the whole image or only over the whole-pixel region
    around all `boxes` (+1 px); returns the sampled (N, h, w) values and the region's slices."""
    h, w = image_size
    boxes = boxes.float()
    if around_boxes:
        x0_int, y0_int = torch.clamp(boxes.min(dim=0).values.floor()[:2] - 1, min=0).to(torch.int32).tolist()
        x1_int = int(torch.clamp(boxes[:, 2].max().ceil() + 1, max=w))
        y1_int = int(torch.clamp(boxes[:, 3].max().ceil() + 1, max=h))
    else:
        x0_int, y0_int, x1_int, y1_int = 0, 0, w, h
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    img_y = torch.arange(y0_int, y1_int, device=boxes.device, dtype=torch.float32) + 0.5
    img_x = torch.arange(x0_int, x1_int, device=boxes.device, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    n = masks.shape[0]
    grid = torch.stack([img_x[:, None, :].expand(n, img_y.size(1), img_x.size(1)),
                        img_y[:, :, None].expand(n, img_y.size(1), img_x.size(1))], dim=3)
    sampled = F.grid_sample(masks[:, None].float(), grid, align_corners=False)[:, 0]
    return sampled, (slice(y0_int, y1_int), slice(x0_int, x1_int))


def paste_masks_in_image(masks: torch.Tensor, boxes: torch.Tensor, image_size: Tuple[int, int],
                         threshold: float = 0.5) -> torch.Tensor:
    """detectron2 `paste_masks_in_image`: (N, M, M) probabilities in (N, 4) boxes -> (N, H, W) bool masks of the
    image, thresholded at `threshold`. As detectron2: on the CPU each mask is sampled only around its own box (far
    less work), on a GPU all masks at once over the whole image, in chunks of at most 1 GiB of samples."""
    n = masks.shape[0]
    h, w = image_size
    out = torch.zeros((n, h, w), dtype=torch.bool, device=masks.device)
    if n == 0:
        return out
    if masks.device.type == "cpu":
        for i in range(n):
            sampled, (rows, cols) = _sample_masks(masks[i:i + 1], boxes[i:i + 1], image_size, around_boxes=True)
            out[i, rows, cols] = sampled[0] >= threshold
        return out
    chunks = math.ceil(n * h * w * 4 / 2 ** 30)
    for index in torch.arange(n, device=masks.device).chunk(chunks):
        out[index] = _sample_masks(masks[index], boxes[index], image_size, around_boxes=False)[0] >= threshold
    return out
