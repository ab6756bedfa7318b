"""Evaluation over a data set: per-image inference at the original size, mIoU accumulation (all-reduced across
processes), the per-class table, and PNGs of image / ground truth / prediction."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Subset
from tqdm import tqdm

from ..drawing import display_size, draw_legend, draw_tag, font, font_size, resize_for_display, side_by_side, tile
from ..engine import ShieldedDataLoader, dist
from ..engine.amp import autocast
from ..files import atomic_write
from .inference import predict
from .metric import SegMetric
from .visualize import class_colours, colorize


def save_visualization(path: Path, image: np.ndarray, label: np.ndarray, pred: np.ndarray,
                       class_names: Sequence[str], ignore_index: int = 255) -> None:
    """image | ground truth | prediction side by side (small images enlarged, `drawing.display_size`), in the class
    colours of `seg.visualize` (black = ignored; the prediction is dimmed where the ground truth is ignored, since
    those pixels are not scored), with a legend of the classes present in either."""
    colours = class_colours(class_names)
    predicted = colorize(pred, colours, ignore_index)
    unscored = label == ignore_index
    predicted[unscored] = (predicted[unscored] * 0.35).astype(np.uint8)
    size = display_size(*label.shape)
    text_font = font(font_size(*size))
    panels = []
    for pixels, title in ((image, "image"), (colorize(label, colours, ignore_index), "ground truth"),
                          (predicted, "prediction")):
        panel = Image.fromarray(resize_for_display(torch.from_numpy(pixels).permute(2, 0, 1), size)
                                .permute(1, 2, 0).numpy())
        draw_tag(ImageDraw.Draw(panel), (0, 0), title, (255, 255, 255), text_font, above=False)
        panels.append(panel)
    present = sorted((set(np.unique(label).tolist()) | set(np.unique(pred).tolist())) - {ignore_index})
    legend = draw_legend([(class_names[c], tuple(int(v) for v in colours[c])) for c in present], size[0], text_font)
    figure = side_by_side(tile(panels, columns=3), legend)
    atomic_write(path, lambda tmp: figure.save(tmp, format="PNG"))


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
