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
from torch.utils.data import Subset
from tqdm import tqdm

from ..data.coco import CocoDetection, collate_detection
from ..engine import ShieldedDataLoader, dist, model_device
from ..engine.amp import autocast
from ..files import write_text

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


class COCOEvaluator:
    """Runs a detector over a `CocoDetection` split (`predict`: this rank's share), and evaluates the gathered
    predictions on the main process (`evaluate_results`), writing `coco_instances_results.json` and `metrics.json`
    to `output_dir`."""

    def __init__(self, dataset: CocoDetection, output_dir, iou_types: Sequence[str] = ("bbox", "segm"),
                 batch_size: int = 1, num_workers: int = 0, amp: str = "none", max_images: int = 0):
        self.dataset = dataset
        self.output_dir = Path(output_dir)
        self.iou_types = tuple(iou_types)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.amp = amp
        self.max_images = max_images
        self.category_names = dict(zip(dataset.category_ids, dataset.category_names))

    def num_images(self) -> int:
        """The images evaluated: the first `max_images` of the split (all of them when 0)."""
        return len(self.dataset) if self.max_images <= 0 else min(self.max_images, len(self.dataset))

    def image_indices(self) -> List[int]:
        return list(range(dist.get_rank(), self.num_images(), dist.get_world_size()))

    @torch.no_grad()
    def predict(self, model: torch.nn.Module) -> List[Dict]:
        """This rank's share of the split -> COCO result dicts, predicted at the network's test size (the dataset's
        transform) and mapped back to each image's size in the annotation file."""
        device = model_device(model)
        was_training = model.training
        model.eval()
        loader = ShieldedDataLoader(Subset(self.dataset, self.image_indices()), batch_size=self.batch_size,
                                    num_workers=self.num_workers, collate_fn=collate_detection)
        mixed_precision = autocast(device.type, self.amp) if device.type == "cuda" else nullcontext()
        results = []
        for images, targets in tqdm(loader, desc="evaluate", disable=not dist.is_main_process(),
                                    dynamic_ncols=True):
            ids = [int(t["image_id"]) for t in targets]
            sizes = [(self.dataset.coco.imgs[i]["height"], self.dataset.coco.imgs[i]["width"]) for i in ids]
            with mixed_precision:
                outputs = model([img.to(device) for img in images], output_sizes=sizes)
            for out, image_id in zip(outputs, ids):
                results += instances_to_results(out, image_id, self.dataset.category_ids)
        model.train(was_training)
        return results

    def evaluate_results(self, results: List[Dict], verbose: bool = True) -> Dict[str, Dict[str, Optional[float]]]:
        """COCOeval of gathered results for every iou type; writes the two files. Main process only."""
        evaluated_ids = set(self.dataset.ids[: self.num_images()])
        coco_gt = self.dataset.coco
        if len(evaluated_ids) < len(coco_gt.imgs):
            coco_gt = _subset(coco_gt, evaluated_ids)
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
