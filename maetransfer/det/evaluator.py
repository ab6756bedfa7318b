"""COCO evaluation of instance predictions (bbox and segm), as detectron2's COCOEvaluator reports it: AP numbers
x100, the standard 12-number summaries and per-category AP.

COCOeval runs through faster-coco-eval when it is installed (its C++ evaluate + accumulate, the role of detectron2's
COCOeval_opt; the same stats as pycocotools, tested) and through pycocotools' Python COCOeval otherwise.
"""
import json
from contextlib import nullcontext, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.coco import CocoDetection, collate_detection
from ..engine import DatasetEvaluator
from ..files import write_text
from .visualize import save_predictions

try:
    import faster_coco_eval
except ImportError:
    faster_coco_eval = None

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
RESULTS_FILE = "coco_instances_results.json"
METRICS_FILE = "metrics.json"


def instances_to_results(output: Dict[str, torch.Tensor], image_id: int,
                         category_ids: Sequence[int]) -> List[Dict]:
    """One image's predictions (boxes xyxy, labels 0..K-1, scores, bool masks (N, H, W) at the original image size)
    -> COCO result dicts with original category ids, xywh boxes and RLE masks, unrounded as detectron2 writes them."""
    boxes = output["boxes"].detach().float().cpu()
    if boxes.shape[0] == 0:
        return []
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    rles = None
    if "masks" in output:
        binary = output["masks"].detach().cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    results = []
    for i in range(len(scores)):
        res = {"image_id": int(image_id), "category_id": int(category_ids[labels[i]]), "bbox": xywh[i],
               "score": scores[i]}
        if rles is not None:
            res["segmentation"] = {"size": list(rles[i]["size"]), "counts": rles[i]["counts"].decode("ascii")}
        results.append(res)
    return results


def _run_cocoeval(coco_gt: COCO, results: List[Dict], iou_type: str, backend: str):
    """COCOeval of `results` (evaluated and accumulated) with `backend`: 'faster_coco_eval', 'pycocotools' or
    'auto' (the first when installed)."""
    if backend == "auto":
        backend = "pycocotools" if faster_coco_eval is None else "faster_coco_eval"
    if backend == "faster_coco_eval":
        if faster_coco_eval is None:
            raise ImportError("faster-coco-eval is not installed (pip install faster-coco-eval)")
        # The ground-truth dicts are shared, not deep-copied (seconds at val2017 size): both COCOevals only add keys
        # to them (ignore flags; faster-coco-eval also caches each instance's RLE), which nothing else reads.
        gt = faster_coco_eval.COCO(coco_gt.dataset, print_function=print)
        evaluator = faster_coco_eval.COCOeval_faster(gt, gt.loadRes(results), iou_type, print_function=print)
    elif backend == "pycocotools":
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
    else:
        raise ValueError(f"unknown COCO evaluation backend {backend!r}: auto, faster_coco_eval or pycocotools")
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator


def coco_eval(coco_gt: COCO, results: List[Dict], iou_type: str, category_names: Dict[int, str],
              verbose: bool = True, backend: str = "auto") -> Dict[str, Optional[float]]:
    """COCOeval for one iou type; returns the 12 stats x100 (None where COCO has no ground truth, its -1) and
    'AP-<category>' entries. `backend`: see `_run_cocoeval`."""
    # loadRes writes ids and areas into the result dicts (not into their values): shallow copies keep ours intact.
    # For segm the box is left out: loadRes would take its area as the instance area and shift small/medium/large
    # (detectron2 drops it for the same reason).
    drop = ("bbox",) if iou_type == "segm" else ()
    results = [{k: v for k, v in r.items() if k not in drop} for r in results]
    if not results:
        if verbose:
            print(f"{iou_type}: no predictions; every AP is 0")
        return {name: 0.0 for name in STAT_NAMES}
    quiet = StringIO()
    with redirect_stdout(quiet):  # loadRes/evaluate chatter; the summary is printed below
        evaluator = _run_cocoeval(coco_gt, results, iou_type, backend)
    with nullcontext() if verbose else redirect_stdout(quiet):
        if verbose:
            print(f"Evaluation results for {iou_type}:")
        evaluator.summarize()
    metrics = {name: (float(v) * 100 if v >= 0 else None) for name, v in zip(STAT_NAMES, evaluator.stats)}
    # precision: (iou thresholds, recall points, categories, area ranges, max dets); area 'all', 100 detections.
    precision = evaluator.eval["precision"]
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        metrics[f"AP-{category_names[cat_id]}"] = float(p.mean()) * 100 if p.size else None
    if verbose:
        print(_per_category_table(metrics, [category_names[c] for c in evaluator.params.catIds], iou_type))
    return metrics


def _per_category_table(metrics: Dict, names: List[str], iou_type: str, columns: int = 3) -> str:
    cells = [(n, "nan" if metrics[f"AP-{n}"] is None else f"{metrics[f'AP-{n}']:.3f}") for n in names]
    width = max([len(n) for n in names] + [8])
    lines = [f"Per-category {iou_type} AP:"]
    header = " | ".join(f"{'category':<{width}} | {'AP':>7}" for _ in range(min(columns, len(cells))))
    lines += [header, "-" * len(header)]
    for i in range(0, len(cells), columns):
        lines.append(" | ".join(f"{n:<{width}} | {v:>7}" for n, v in cells[i:i + columns]))
    return "\n".join(lines)


class COCOEvaluator(DatasetEvaluator):
    """COCO evaluation of a detector over a `CocoDetection` split (`engine.inference_on_dataset` runs it): each image
    is predicted at the network's test size (the dataset's transform) and mapped back to its size in the annotation
    file; on the main process, the gathered predictions are scored for every iou type against the images that were
    evaluated, and `coco_instances_results.json`, `metrics.json` and `predictions.png` (the first images' detections)
    are written to `output_dir`."""

    collate_fn = staticmethod(collate_detection)

    def __init__(self, dataset: CocoDetection, output_dir, iou_types: Sequence[str] = ("bbox", "segm"),
                 batch_size: int = 1, num_pictures: int = 8):
        self.dataset = dataset
        self.output_dir = Path(output_dir)
        self.iou_types = tuple(iou_types)
        self.batch_size, self.num_pictures = batch_size, num_pictures
        self.category_names = dict(zip(dataset.category_ids, dataset.category_names))
        self.reset()

    def reset(self):
        self.predictions: Dict[int, List[Dict]] = {}  # image id -> its COCO result dicts

    @property
    def image_ids(self) -> List[int]:
        return list(self.predictions)

    @property
    def results(self) -> List[Dict]:
        return [r for image_results in self.predictions.values() for r in image_results]

    def forward(self, model, inputs, device):
        images, targets = inputs
        sizes = [(self.dataset.coco.imgs[int(t["image_id"])]["height"],
                  self.dataset.coco.imgs[int(t["image_id"])]["width"]) for t in targets]
        return model([img.to(device) for img in images], output_sizes=sizes)

    def process(self, inputs, outputs):
        for target, output in zip(inputs[1], outputs):
            image_id = int(target["image_id"])
            self.predictions[image_id] = instances_to_results(output, image_id, self.dataset.category_ids)

    def local_results(self):
        return self.predictions

    def merge(self, parts):
        # in the split's order, so that the results file is the same on any number of processes
        merged = {image_id: results for part in parts for image_id, results in part.items()}
        self.predictions = {i: merged[i] for i in self.dataset.ids if i in merged}

    def evaluate(self) -> Dict[str, Dict[str, Optional[float]]]:
        metrics = self.evaluate_results(self.results, self.image_ids)
        # the picture draws these predictions: the model does not run again for it
        shown = self.image_ids[:self.num_pictures]
        save_predictions(self.results, self.dataset, shown, self.output_dir / "predictions.png")
        return metrics

    def evaluate_results(self, results: List[Dict], image_ids: Optional[Sequence[int]] = None,
                         verbose: bool = True) -> Dict[str, Dict[str, Optional[float]]]:
        """COCOeval of `results` on the images `image_ids` (all of the split when None) for every iou type; writes
        coco_instances_results.json and metrics.json."""
        coco_gt = self.dataset.coco
        if image_ids is not None and len(set(image_ids)) < len(coco_gt.imgs):
            coco_gt = _subset(coco_gt, set(image_ids))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.output_dir / RESULTS_FILE, json.dumps(results))
        metrics = {t: coco_eval(coco_gt, results, t, self.category_names, verbose) for t in self.iou_types}
        write_text(self.output_dir / METRICS_FILE, json.dumps(metrics, indent=2))
        return metrics


def _subset(coco: COCO, image_ids) -> COCO:
    """A COCO object restricted to some images (evaluation on the first N images of a split)."""
    data = coco.dataset
    sub = COCO()
    sub.dataset = {**data, "images": [i for i in data["images"] if i["id"] in image_ids],
                   "annotations": [a for a in data["annotations"] if a["image_id"] in image_ids]}
    with redirect_stdout(StringIO()):
        sub.createIndex()
    return sub
