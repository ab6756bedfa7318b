"""Top-1 / top-5, per-class and mean per-class accuracy; sharded over ranks without duplicates and summed exactly."""
import csv
import io
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from ..engine import DatasetEvaluator
from ..files import atomic_write, write_text


CONFUSION_MAX_CLASSES = 50  # a confusion-matrix picture is readable only for a few classes


class AccuracyCounter:
    """Counts over a stream of (logits, labels): per-class images and top-1 hits, top-k hits, summed loss, and for
    up to CONFUSION_MAX_CLASSES classes the confusion matrix (rows: true class, columns: top-1 prediction)."""

    def __init__(self, num_classes: int, topk=(1, 5)):
        self.num_classes = num_classes
        self.topk = tuple(k for k in topk if k <= num_classes)  # top-5 of a 3-class problem is meaningless
        self.per_class_total = np.zeros(num_classes, dtype=np.int64)
        self.per_class_correct = np.zeros(num_classes, dtype=np.int64)
        self.topk_correct = {k: 0 for k in self.topk}
        self.loss_sum = 0.0
        small = num_classes <= CONFUSION_MAX_CLASSES
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64) if small else None

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits, labels = logits.float(), labels.long()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        ranked = logits.topk(max(self.topk), dim=1).indices
        hits = ranked == labels[:, None]
        for k in self.topk:
            self.topk_correct[k] += int(hits[:, :k].any(dim=1).sum())
        labels_np = labels.cpu().numpy()
        self.per_class_total += np.bincount(labels_np, minlength=self.num_classes)
        self.per_class_correct += np.bincount(labels_np[hits[:, 0].cpu().numpy()], minlength=self.num_classes)
        if self.confusion is not None:
            np.add.at(self.confusion, (labels_np, ranked[:, 0].cpu().numpy()), 1)

    @classmethod
    def sum(cls, counters: List["AccuracyCounter"]) -> "AccuracyCounter":
        """The counts of several counters (one per rank) added up."""
        out = cls(counters[0].num_classes, counters[0].topk)
        for c in counters:
            out.per_class_total += c.per_class_total
            out.per_class_correct += c.per_class_correct
            out.loss_sum += c.loss_sum
            if out.confusion is not None:
                out.confusion += c.confusion
            for k in out.topk:
                out.topk_correct[k] += c.topk_correct[k]
        return out

    def per_class_accuracy(self) -> np.ndarray:
        """Accuracy of each class in percent; NaN for classes without validation images."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return 100.0 * self.per_class_correct / self.per_class_total

    def summary(self) -> Dict[str, float]:
        n = int(self.per_class_total.sum())
        out = {f"top{k}": 100.0 * self.topk_correct[k] / max(n, 1) for k in self.topk}
        per_class = self.per_class_accuracy()
        # Mean over the classes present in the evaluated set (iNat val misses none, a custom split may).
        out["mean_class_acc"] = float(np.nanmean(per_class)) if n else 0.0
        out["loss"] = self.loss_sum / max(n, 1)
        out["num_images"] = n
        out["num_classes_evaluated"] = int((self.per_class_total > 0).sum())
        return out


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1 / top-5, per-class and mean per-class accuracy of a classifier over a data set of (image, label) batches
    (`engine.inference_on_dataset` runs it); the counts of every process are added up on the main process, which
    writes metrics.json, per_class_accuracy.csv and the confusion matrix (`write_results`) and prints the summary."""

    def __init__(self, dataset: Dataset, classes: List[str], batch_size: int, output_dir, name: str = ""):
        self.dataset, self.classes, self.batch_size = dataset, list(classes), batch_size
        self.output_dir, self.name = output_dir, name or getattr(dataset, "index_file", "")
        self.reset()

    def reset(self):
        self.counter = AccuracyCounter(getattr(self.dataset, "num_classes", len(self.classes)))

    def forward(self, model, inputs, device):
        return model(inputs[0].to(device, non_blocking=True))

    def process(self, inputs, outputs):
        self.counter.update(outputs, inputs[1].to(outputs.device))

    def local_results(self):
        return self.counter

    def merge(self, parts):
        self.counter = AccuracyCounter.sum(parts)

    def evaluate(self) -> Dict:
        summary = write_results(self.counter, self.classes, self.output_dir, {"dataset": str(self.name)})
        print(f"{self.name}: {format_summary(summary)}")
        return summary


def write_results(counter: AccuracyCounter, classes: List[str], output_dir, extra: Optional[Dict] = None) -> Dict:
    """metrics.json (summary), per_class_accuracy.csv and, for few classes, confusion_matrix.png in `output_dir`;
    returns the summary."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {**counter.summary(), **(extra or {})}
    write_text(output_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    acc = counter.per_class_accuracy()
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["label", "name", "images", "top1_correct", "accuracy"])
    for i, name in enumerate(classes):
        writer.writerow([i, name, int(counter.per_class_total[i]), int(counter.per_class_correct[i]),
                         "" if np.isnan(acc[i]) else f"{acc[i]:.4f}"])
    write_text(output_dir / "per_class_accuracy.csv", table.getvalue())
    if counter.confusion is not None:
        figure = confusion_image(counter.confusion, classes)
        atomic_write(output_dir / "confusion_matrix.png", lambda tmp: figure.save(tmp, format="PNG"))
    return summary


def confusion_image(confusion: np.ndarray, classes: List[str]) -> Image.Image:
    """Row-normalised confusion matrix: white (0%) to dark blue (100% of the true class), percentages in the cells."""
    n = len(classes)
    cell = max(12, min(40, 640 // n))
    font = ImageFont.load_default()
    names = [f"{i} {name}"[:24] for i, name in enumerate(classes)]
    left = 8 + max(int(font.getlength(t)) for t in names)
    top = 34
    header = "rows: true class, columns: predicted class"
    width = left + max(n * cell, int(font.getlength(header))) + 8  # the header fits also above a few classes
    img = Image.new("RGB", (width, top + n * cell + 8), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 4), header, fill="black", font=font)
    rows = confusion.sum(axis=1, keepdims=True)
    frac = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    for i in range(n):
        draw.text((4, top + i * cell + cell // 2 - 5), names[i], fill="black", font=font)
        draw.text((left + i * cell + 2, top - 14), str(i), fill="black", font=font)
        for j in range(n):
            v = frac[i, j]
            colour = tuple(int(255 - v * (255 - c)) for c in (8, 48, 107))
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=colour, outline=(220, 220, 220))
            if cell >= 28 and confusion[i, j]:
                draw.text((box[0] + 3, box[1] + cell // 2 - 5), f"{100 * v:.0f}", font=font,
                          fill="white" if v > 0.5 else "black")
    return img


def format_summary(summary: Dict) -> str:
    parts = [f"top-1 {summary['top1']:.2f}"]
    if "top5" in summary:
        parts.append(f"top-5 {summary['top5']:.2f}")
    parts.append(f"mean per-class {summary['mean_class_acc']:.2f}")
    return "  ".join(parts) + f"  ({summary['num_images']} images, loss {summary['loss']:.4f})"
