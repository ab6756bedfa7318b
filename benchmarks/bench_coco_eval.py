#!/usr/bin/env python
"""COCO evaluation time at the size of COCO val2017: pycocotools' Python COCOeval vs faster-coco-eval's C++ one,
through the evaluator's own `coco_eval` (what a detection run calls), timed in one process.

  python benchmarks/bench_coco_eval.py                     # 5000 images, 100 detections each (val2017 scale)
  python benchmarks/bench_coco_eval.py --images 500

Ground truth and results are generated: 640x480 / 480x640 images, 80 categories with COCO's non-contiguous ids,
~7.4 polygon instances per image (val2017: 36781 on 5000 images) of every area range, 1 % crowd regions as RLE, and
100 detections per image (jittered copies of the ground truth, some with a wrong class, plus false positives) with
compressed-RLE masks, as a detector's results file holds them. Prints each backend's time per iou type, the ratio,
and whether the 12 stats agree.
"""
import argparse
import time
from typing import Dict, List, Tuple

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO

from maetransfer.det.evaluator import STAT_NAMES, coco_eval


def star_polygon(rng, cx: float, cy: float, radius: float, vertices: int, inner: float = 0.6) -> np.ndarray:
    """(vertices, 2) points of a star-shaped polygon around (cx, cy), each at inner..1 x radius from it."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    r = radius * rng.uniform(inner, 1.0, vertices)
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)


def _polygon(rng, cx: float, cy: float, radius: float) -> List[float]:
    """A star-shaped polygon of 8-20 vertices around (cx, cy), as flat [x0, y0, ...]."""
    return star_polygon(rng, cx, cy, radius, int(rng.integers(8, 21))).ravel().tolist()


def _rle(polygons: List[List[float]], h: int, w: int) -> Dict:
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def make_gt_and_results(num_images: int, detections_per_image: int = 100, seed: int = 0) -> Tuple[Dict, List]:
    """(COCO instances dict, results list) as described in the module docstring."""
    rng = np.random.default_rng(seed)
    category_ids = sorted(rng.choice(np.arange(1, 91), 80, replace=False).tolist())
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        h, w = (480, 640) if rng.uniform() < 0.7 else (640, 480)
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": h, "width": w})
        instances = []
        for _ in range(int(rng.poisson(7.4))):
            radius = float(np.exp(rng.uniform(np.log(4), np.log(220))))  # small, medium and large areas
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            crowd = rng.uniform() < 0.01
            polygon = _polygon(rng, cx, cy, radius)
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], h, w))
            if mask_utils.area(rle) == 0:
                continue
            category = int(rng.choice(category_ids))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category, "iscrowd": int(crowd),
                "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                "segmentation": _rle([polygon], h, w) if crowd else [polygon]})
            instances.append((category, cx, cy, radius))
        for _ in range(detections_per_image):
            if instances and rng.uniform() < 0.5:  # a jittered copy of a ground-truth instance
                category, cx, cy, radius = instances[int(rng.integers(len(instances)))]
                cx, cy = cx + rng.normal(0, 0.15 * radius), cy + rng.normal(0, 0.15 * radius)
                radius *= float(np.exp(rng.normal(0, 0.2)))
                if rng.uniform() < 0.2:
                    category = int(rng.choice(category_ids))
            else:  # a false positive
                category, cx, cy = int(rng.choice(category_ids)), rng.uniform(0, w), rng.uniform(0, h)
                radius = float(np.exp(rng.uniform(np.log(4), np.log(220))))
            segmentation = _rle([_polygon(rng, cx, cy, radius)], h, w)
            bbox = mask_utils.toBbox(segmentation).tolist()
            if bbox[2] <= 0 or bbox[3] <= 0:
                continue
            results.append({"image_id": image_id, "category_id": category, "bbox": bbox,
                            "score": float(rng.uniform(0.05, 1.0)), "segmentation": segmentation})
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in category_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    dataset, results = make_gt_and_results(args.images, args.detections)
    gt = COCO()
    gt.dataset = dataset
    gt.createIndex()
    print(f"generated {len(dataset['images'])} images, {len(dataset['annotations'])} ground-truth instances, "
          f"{len(results)} detections in {time.perf_counter() - start:.0f} s")
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    times, stats = {}, {}
    for iou_type in ("bbox", "segm"):
        for backend in ("pycocotools", "faster_coco_eval"):
            start = time.perf_counter()
            metrics = coco_eval(gt, results, iou_type, names, verbose=False, backend=backend)
            times[iou_type, backend] = time.perf_counter() - start
            stats[iou_type, backend] = [metrics[k] for k in STAT_NAMES]
    print(f"\nCOCOeval of {len(results)} detections on {args.images} images (evaluate + accumulate + summarize, "
          f"loading the results included)")
    print(f"{'iou type':<9} {'pycocotools s':>14} {'faster-coco-eval s':>19} {'speed-up':>9}  stats")
    for iou_type in ("bbox", "segm"):
        slow, fast = times[iou_type, "pycocotools"], times[iou_type, "faster_coco_eval"]
        same = stats[iou_type, "pycocotools"] == stats[iou_type, "faster_coco_eval"]
        print(f"{iou_type:<9} {slow:>14.1f} {fast:>19.1f} {slow / fast:>8.1f}x  {'identical' if same else 'DIFFER'}"
              f" (AP {stats[iou_type, 'pycocotools'][0]:.2f})")


if __name__ == "__main__":
    main()
