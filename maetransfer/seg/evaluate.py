"""Evaluation over a data set: per-image inference at the original size, mIoU accumulation (all-reduced across
processes), the per-class table, and PNGs of image / ground truth / prediction."""
import colorsys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Subset
from tqdm import tqdm

from ..engine import ShieldedDataLoader, dist
from ..engine.amp import autocast
from .inference import predict
from .metric import SegMetric


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours (golden-ratio hues, alternating brightness)."""
    cols = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95 if i % 2 == 0 else 0.7) for i in range(n)]
    return (np.array(cols) * 255).round().astype(np.uint8).reshape(n, 3)


def colorize(label: np.ndarray, colours: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class map -> (H, W, 3) RGB; ignored pixels black."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    keep = label != ignore_index
    out[keep] = colours[label[keep]]
    return out


def save_visualization(path: Path, image: np.ndarray, label: np.ndarray, pred: np.ndarray,
                       class_names: Sequence[str], ignore_index: int = 255) -> None:
    """image | ground truth | prediction side by side, with a legend of the classes present (black = ignored; the
    prediction is dimmed where the ground truth is ignored, since those pixels are not scored). Small images are
    enlarged (nearest neighbour) to at least 256 px."""
    colours = palette(len(class_names))
    predicted = colorize(pred, colours, ignore_index)
    unscored = label == ignore_index
    predicted[unscored] = (predicted[unscored] * 0.35).astype(np.uint8)
    panels = np.concatenate([image, colorize(label, colours, ignore_index), predicted], 1)
    zoom = max(1, 256 // max(label.shape))
    panels = panels.repeat(zoom, 0).repeat(zoom, 1)
    h, w = label.shape[0] * zoom, label.shape[1] * zoom
    present = sorted((set(np.unique(label).tolist()) | set(np.unique(pred).tolist())) - {ignore_index})
    line = 14
    canvas = Image.new("RGB", (panels.shape[1], h + line * (2 + len(present))), (255, 255, 255))
    canvas.paste(Image.fromarray(panels), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for x, title in zip((0, w, 2 * w), ("image", "ground truth", "prediction")):
        draw.text((x + 2, h + 1), title, fill=(0, 0, 0))
    for i, c in enumerate(present):
        y = h + line * (i + 1) + 2
        draw.rectangle((2, y, 12, y + 10), fill=tuple(int(v) for v in colours[c]))
        draw.text((16, y), class_names[c], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def _single(batch: List[Dict]) -> Dict:
    return batch[0]


@torch.no_grad()
def evaluate_segmentation(model, dataset, eval_cfg, class_names: Sequence[str], scale: Sequence[int],
                          mean: Sequence[float], std: Sequence[float], device: torch.device, ignore_index: int = 255,
                          vis_dir: Optional[Path] = None, amp: str = "none") -> Dict:
    """mIoU / mAcc / aAcc and per-class IoU / Acc of `model` on `dataset` (samples of uint8 images and labels at
    their original size; images are resized to the (long, short) bound `scale` for inference). Each process evaluates every world_size-th image; the areas are summed across processes.
    The main process writes `eval_cfg.num_vis` PNGs into `vis_dir`."""
    was_training = model.training
    model.eval()
    rank, world = dist.get_rank(), dist.get_world_size()
    indices = list(range(rank, len(dataset), world))
    if eval_cfg.max_images > 0:
        indices = indices[: -(-int(eval_cfg.max_images) // world)]
    loader = ShieldedDataLoader(Subset(dataset, indices), batch_size=1, num_workers=int(eval_cfg.num_workers),
                                collate_fn=_single)
    metric = SegMetric(len(class_names), class_names, ignore_index, device)
    mixed_precision = autocast(device.type, amp)
    shown: List[str] = []
    for sample in tqdm(loader, desc="eval", disable=not dist.is_main_process(), dynamic_ncols=True):
        image, label = sample["image"].to(device), sample["label"].to(device)
        with mixed_precision:
            scores = predict(model, image, eval_cfg, scale, mean, std)
        pred = scores.argmax(0)
        metric.update(pred, label)
        if vis_dir is not None and dist.is_main_process() and len(shown) < int(eval_cfg.num_vis):
            save_visualization(Path(vis_dir) / f"{sample['name']}.png", image.permute(1, 2, 0).cpu().numpy(),
                               label.cpu().numpy(), pred.cpu().numpy(), class_names, ignore_index)
            shown.append(sample["name"])
    model.train(was_training)
    return metric.compute()
