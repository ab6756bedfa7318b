#!/usr/bin/env python
"""Training data pipelines, one loader worker's throughput and memory: COCO + LSJ at 1024 (detection) and the ADE20K
pipeline at 512 (segmentation), on generated files of the real data sets' sizes.

  python benchmarks/bench_data.py                        # 48 COCO-sized JPEGs, 30 polygon instances each
  python benchmarks/bench_data.py --images 96 --instances 60

Detection: 640x480 / 480x640 JPEGs with many polygon instances (COCO averages 7.3 per image, crowded images have
dozens; each polygon 12-40 vertices), read by `CocoDetection` and transformed by `LargeScaleJitter(1024, (0.1, 2.0))`.
Segmentation: 683x512 / 512x683 JPEGs with 8-bit label PNGs of up to 150 classes, through `ADE20KDataset` and
`SegTrainTransform` of configs/seg/upernet_vit_base_ade20k.yaml (random resize of the (2048, 512) bound, 512 crop with
cat_max_ratio, flip, photometric distortion, normalise, pad).

Each pipeline runs in a process of its own with one torch thread, as one DataLoader worker does: images/s, the time
per stage, the bytes of one produced sample (what waits in the loader's prefetch queue: workers x prefetch_factor x
batch samples) and the worker's peak resident memory. "Workers per GPU" = the worker count whose images/s reach the
GPU's training rate (detectron2 model zoo, A100: ViTDet-B 0.314 s/image, L 0.603, H 1.098).
"""
import argparse
import json
import math
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_coco_eval import star_polygon  # noqa: E402
from maetransfer.config import load_config  # noqa: E402
from maetransfer.data.ade import ADE20KDataset, SegTrainTransform  # noqa: E402
from maetransfer.data.coco import CocoDetection, LargeScaleJitter  # noqa: E402

VITDET_S_PER_IMAGE = {"ViTDet-B": 0.314, "ViTDet-L": 0.603, "ViTDet-H": 1.098}  # detectron2 model zoo, A100
DETECTION, SEGMENTATION = "COCO + LSJ at 1024", "ADE20K training pipeline at 512"


def _polygon(rng, w: int, h: int, vertices: int) -> np.ndarray:
    """A star-shaped polygon of `vertices` points, of a random size and place in a w x h image."""
    radius = float(np.exp(rng.uniform(np.log(6), np.log(0.4 * min(w, h)))))
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    return star_polygon(rng, cx, cy, radius, vertices, inner=0.5)


def _background(rng, w: int, h: int) -> Image.Image:
    """A photo-like texture (smooth gradients plus grain), so that the JPEGs have realistic sizes."""
    low = rng.uniform(0, 255, (h // 32 + 1, w // 32 + 1, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
    grain = rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def write_coco(root: Path, num_images: int, instances: int, seed: int = 0) -> Path:
    """COCO 2017 layout under `root` (train2017/*.jpg, annotations/instances_train2017.json), 80 categories."""
    rng = np.random.default_rng(seed)
    (root / "train2017").mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        w, h = (640, 480) if image_id % 4 else (480, 640)
        canvas = _background(rng, w, h)
        draw = ImageDraw.Draw(canvas)
        for _ in range(instances):
            points = _polygon(rng, w, h, int(rng.integers(12, 41)))
            draw.polygon([tuple(p) for p in points], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            points = np.clip(points, 0, [w, h])
            x0, y0 = points.min(0)
            x1, y1 = points.max(0)
            box = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.integers(1, 81)), "iscrowd": 0, "area": box[2] * box[3],
                                "bbox": box, "segmentation": [points.ravel().round(2).tolist()]})
        name = f"{image_id:012d}.jpg"
        canvas.save(root / "train2017" / name, quality=90)
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
    ann = root / "annotations" / "instances_train2017.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": images, "annotations": annotations,
                               "categories": [{"id": c, "name": f"class{c}"} for c in range(1, 81)]}))
    return ann


def write_ade(root: Path, num_images: int, regions: int = 30, seed: int = 0) -> Path:
    """ADEChallengeData2016 layout under `root`: images/training/*.jpg and annotations/training/*.png."""
    rng = np.random.default_rng(seed)
    for sub in ("images/training", "annotations/training"):
        (root / sub).mkdir(parents=True)
    for i in range(num_images):
        w, h = (683, 512) if i % 4 else (512, 683)
        label = Image.new("L", (w, h), int(rng.integers(1, 151)))
        draw = ImageDraw.Draw(label)
        for _ in range(regions):
            draw.polygon([tuple(p) for p in _polygon(rng, w, h, int(rng.integers(6, 20)))],
                         fill=int(rng.integers(0, 151)))
        _background(rng, w, h).save(root / "images/training" / f"ADE_train_{i:08d}.jpg", quality=90)
        label.save(root / "annotations/training" / f"ADE_train_{i:08d}.png")
    return root


def _sample_bytes(sample) -> int:
    if isinstance(sample, torch.Tensor):
        return sample.numel() * sample.element_size()
    if isinstance(sample, np.ndarray):
        return sample.nbytes
    if isinstance(sample, dict):
        return sum(_sample_bytes(v) for v in sample.values())
    if isinstance(sample, (list, tuple)):
        return sum(_sample_bytes(v) for v in sample)
    return 0


def measure(count: int, rounds: int, stages):
    """Mean seconds per image of each stage (a stage maps the previous one's output; the first gets the index), over
    `rounds` passes with fresh random draws, and the mean MB of the final output."""
    seconds = {name: 0.0 for name, _ in stages}
    sizes = []
    for _ in range(rounds):
        for index in range(count):
            value = index
            for name, fn in stages:
                start = time.perf_counter()
                value = fn(value)
                seconds[name] += time.perf_counter() - start
            sizes.append(_sample_bytes(value))
    return {name: s / (count * rounds) for name, s in seconds.items()}, statistics.mean(sizes) / 2 ** 20


def run_pipeline(name: str, root: str, rounds: int, queue) -> None:
    """Measure one pipeline in a fresh process (so that its peak memory is its own), as one loader worker."""
    torch.set_num_threads(1)  # a loader worker: the training process owns the other cores
    np.random.seed(0)  # the pipelines draw from numpy's generator (the engine seeds it per sample)
    root = Path(root)
    if name == DETECTION:
        coco = CocoDetection(root / "train2017", root / "annotations/instances_train2017.json", filter_empty=True)
        lsj = LargeScaleJitter(1024, (0.1, 2.0), 0.5)
        stages, sample_mb = measure(len(coco), rounds, [
            ("read + decode JPEG", lambda i: (coco.load_image(coco.ids[i]), coco.ids[i])),
            ("annotations -> target", lambda v: (v[0], coco.load_target(v[1]))),
            ("LSJ: flip, resize, crop, polygons", lambda v: lsj(*v))])
    else:
        ade = ADE20KDataset(root, "training")
        transform = SegTrainTransform(load_config(ROOT / "configs/seg/upernet_vit_base_ade20k.yaml").data)
        stages, sample_mb = measure(len(ade), rounds, [
            ("read + decode JPEG and label PNG", lambda i: ade[i]),
            ("resize, crop, flip, photometric, pad", transform)])
    queue.put((stages, sample_mb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--instances", type=int, default=30, help="polygon instances per COCO image")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the images (new random draws each)")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        roots = {DETECTION: Path(tmp) / "coco", SEGMENTATION: Path(tmp) / "ade"}
        write_coco(roots[DETECTION], args.images, args.instances)
        write_ade(roots[SEGMENTATION], args.images)
        for name, root in roots.items():
            queue = ctx.Queue()
            proc = ctx.Process(target=run_pipeline, args=(name, str(root), args.rounds, queue))
            proc.start()
            results[name] = queue.get()
            proc.join()
    print(f"\none loader worker (1 torch thread, its own process), {args.images} generated images x {args.rounds} "
          f"passes; COCO images with {args.instances} polygon instances")
    for name, (stages, sample_mb, peak_mb) in results.items():
        total = sum(stages.values())
        print(f"\n{name}: {1 / total:.1f} images/s per worker; {sample_mb:.1f} MB per produced sample; "
              f"worker peak RSS {peak_mb:.0f} MB")
        for stage, seconds in stages.items():
            print(f"  {stage:<38} {1000 * seconds:7.1f} ms")
    det_rate = 1 / sum(results[DETECTION][0].values())
    print("\nworkers per GPU to feed detection training at the detectron2 model-zoo rate (A100):")
    for model, seconds in VITDET_S_PER_IMAGE.items():
        print(f"  {model}: {1 / seconds:.1f} images/s -> {math.ceil(1 / seconds / det_rate)} worker(s)")


if __name__ == "__main__":
    main()
