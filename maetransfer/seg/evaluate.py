"""Evaluation over a data set: per-image inference at the original size, mIoU accumulation, the per-class table, and
PNGs of image / ground truth / prediction."""
import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..drawing import display_size, draw_legend, draw_tag, font, font_size, resize_for_display, side_by_side, tile
from ..engine import DatasetEvaluator, dist
from ..files import atomic_write, write_text
from .inference import predict
from .metric import SegMetric, format_table
from .visualize import class_colours, colorize


def save_visualization(path: Path, image: np.ndarray, label: np.ndarray, pred: np.ndarray,
                       class_names: Sequence[str], ignore_index: int = 255, palette=None) -> None:
    """image | ground truth | prediction side by side (small images enlarged, `drawing.display_size`), in the class
    colours of `seg.visualize` (black = ignored; the prediction is dimmed where the ground truth is ignored, since
    those pixels are not scored), with a legend of the classes present in either. `palette`: the data set's own
    colours (data.palette), else those of `seg.visualize.class_colours`."""
    colours = class_colours(class_names, palette)
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


class SegEvaluator(DatasetEvaluator):
    """mIoU / mAcc / aAcc and per-class IoU / Acc (mmseg's IoUMetric) over a data set of uint8 images and labels at
    their original size (`engine.inference_on_dataset` runs it): each image goes through the evaluation's inference
    (`seg.inference.predict`: resize to the (long, short) bound `scale`, whole or sliding-window, flips and scales
    as `eval_cfg` says), the areas of every process are added up on the main process, which writes metrics.json and
    prints the per-class table. The main process also writes image / ground truth / prediction PNGs of its first
    `eval_cfg.num_vis` images into `output_dir`/vis."""

    @staticmethod
    def collate_fn(batch: List[Dict]) -> Dict:
        return batch[0]  # one image at a time, at its own size

    def __init__(self, dataset, eval_cfg, class_names: Sequence[str], scale: Sequence[int], mean: Sequence[float],
                 std: Sequence[float], output_dir, ignore_index: int = 255, palette=None):
        self.dataset, self.eval_cfg, self.class_names, self.palette = dataset, eval_cfg, list(class_names), palette
        self.scale, self.mean, self.std, self.ignore_index = tuple(scale), tuple(mean), tuple(std), ignore_index
        self.output_dir = Path(output_dir)
        self.reset()

    def reset(self):
        self.metric = SegMetric(len(self.class_names), self.class_names, self.ignore_index)
        self.shown = 0

    def forward(self, model, inputs, device):
        return predict(model, inputs["image"], self.eval_cfg, self.scale, self.mean, self.std, device).argmax(0)

    def process(self, inputs, outputs):
        if self.metric.areas.device != outputs.device:  # sums on the model's device: no copy back per image
            self.metric.areas = self.metric.areas.to(outputs.device)
        self.metric.update(outputs, inputs["label"])
        if dist.is_main_process() and self.shown < int(self.eval_cfg.num_vis):
            save_visualization(self.output_dir / "vis" / f"{inputs['name']}.png",
                               inputs["image"].permute(1, 2, 0).numpy(), inputs["label"].numpy(),
                               outputs.cpu().numpy(), self.class_names, self.ignore_index, self.palette)
            self.shown += 1

    def local_results(self):
        return self.metric.areas.cpu()

    def merge(self, parts):
        self.metric.areas = sum(parts[1:], parts[0].clone())

    def evaluate(self) -> Dict:
        results = self.metric.compute()
        write_text(self.output_dir / "metrics.json", json.dumps(results, indent=2) + "\n")
        print(format_table(results["per_class"]))
        print(f"mIoU {results['mIoU']}  mAcc {results['mAcc']}  aAcc {results['aAcc']}  "
              f"({len(self.class_names)} classes)")
        return results
