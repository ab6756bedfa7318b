"""Detections drawn for a person: each instance's mask filled in its own colour, its box, and a tag with the class
name and score in a font sized to the picture (tools/predict.py, and the predictions.png of an evaluation, which
draws the evaluation's own predictions: the model does not run again for the picture)."""
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.utils import draw_bounding_boxes

from ..data.coco import CocoDetection
from ..drawing import display_size, distinct_colours, draw_tag, font, font_size, resize_for_display, tile
from ..files import atomic_write


def draw_detections(image: torch.Tensor, detections: Dict[str, torch.Tensor], class_names: Sequence[str],
                    score_thresh: float = 0.0, height: Optional[int] = None) -> Image.Image:
    """`image` (uint8 (3, H, W)) with the detections scoring at least `score_thresh` (`boxes` xyxy, `scores`,
    `labels`, bool `masks` (N, H, W), all at the image's size), shown at `drawing.display_size(H, W, height)`. The
    best detection is drawn last: its mask and tag lie on top."""
    h, w = image.shape[1:]
    out_h, out_w = display_size(h, w, height)
    canvas = resize_for_display(image, (out_h, out_w))
    scores = detections["scores"].detach().float().cpu()
    order = [i for i in scores.argsort().tolist() if scores[i] >= score_thresh]
    if not order:
        return Image.fromarray(canvas.permute(1, 2, 0).numpy())
    palette = torch.from_numpy(distinct_colours(len(order)))
    colours = [tuple(int(v) for v in c) for c in palette]
    index = torch.tensor(order)
    if "masks" in detections:
        canvas = fill_masks(canvas, detections["masks"].detach().cpu()[index], palette)
    boxes = detections["boxes"].detach().float().cpu()[index] * torch.tensor([out_w / w, out_h / h] * 2)
    size = font_size(out_h, out_w)
    canvas = draw_bounding_boxes(canvas, boxes, colors=colours, width=max(2, size // 6))
    picture = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    draw, text_font = ImageDraw.Draw(picture), font(size)
    labels = detections["labels"].detach().cpu()[index].tolist()
    for box, label, score, colour in zip(boxes.tolist(), labels, scores[index].tolist(), colours):
        draw_tag(draw, (box[0], box[1]), f"{class_names[label]} {score:.2f}", colour, text_font)
    return picture


def fill_masks(canvas: torch.Tensor, masks: torch.Tensor, palette: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Each mask of (N, H, W) filled in its colour at `alpha` over `canvas` (3, h, w), a later mask over an earlier
    one where they overlap (torchvision's draw_segmentation_masks paints overlaps black). The masks are resized to
    the canvas as one map of mask indices."""
    top = torch.zeros(masks.shape[1:], dtype=torch.long)  # 1 + the index of the last mask covering each pixel
    for i, (mask, row) in enumerate(zip(masks, masks.any(2)), 1):
        ys = row.nonzero()[:, 0]
        if len(ys):  # only the mask's extent is visited: a tenth of the time of whole-image passes at COCO sizes
            y0, y1 = int(ys[0]), int(ys[-1]) + 1
            xs = mask[y0:y1].any(0).nonzero()[:, 0]
            x0, x1 = int(xs[0]), int(xs[-1]) + 1
            top[y0:y1, x0:x1].masked_fill_(mask[y0:y1, x0:x1], i)
    top = F.interpolate(top[None, None].float(), size=canvas.shape[1:], mode="nearest")[0, 0].long()
    layer = torch.cat([torch.zeros(1, 3, dtype=torch.uint8), palette])[top].permute(2, 0, 1)
    blend = ((1 - alpha) * canvas.float() + alpha * layer.float()).round().to(torch.uint8)
    return torch.where(top > 0, blend, canvas)


def results_to_instances(results: Sequence[Dict], label_of: Mapping[int, int]) -> Dict[str, torch.Tensor]:
    """COCO result dicts of one image (xywh boxes, category ids, RLE masks: `evaluator.instances_to_results`) back
    to instance tensors (xyxy boxes, labels 0..K-1, bool masks)."""
    boxes = torch.tensor([r["bbox"] for r in results], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    out = {"boxes": boxes, "scores": torch.tensor([r["score"] for r in results], dtype=torch.float32),
           "labels": torch.tensor([label_of[r["category_id"]] for r in results], dtype=torch.int64)}
    if results and "segmentation" in results[0]:
        masks = mask_utils.decode([dict(r["segmentation"], counts=r["segmentation"]["counts"].encode("ascii"))
                                   for r in results])
        out["masks"] = torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1))).view(torch.bool)  # 0 / 1
    return out


def save_predictions(results: List[Dict], dataset: CocoDetection, image_ids: Sequence[int], path,
                     score_thresh: float = 0.3, height: int = 512, columns: int = 4) -> Path:
    """The PNG of an evaluation: its predictions (COCO result dicts, as gathered for COCOeval) of the images
    `image_ids` drawn on the original images, every panel `height` px high, in rows of `columns`."""
    by_image: Dict[int, List[Dict]] = defaultdict(list)
    for result in results:
        if result["score"] >= score_thresh:  # only the masks drawn are decoded
            by_image[result["image_id"]].append(result)
    panels = [draw_detections(dataset.load_image(i), results_to_instances(by_image[i], dataset.label_of),
                              dataset.category_names, score_thresh, height) for i in image_ids]
    figure = tile(panels, columns)
    return atomic_write(path, lambda tmp: figure.save(tmp, format="PNG"))
