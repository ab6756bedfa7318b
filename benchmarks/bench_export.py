#!/usr/bin/env python
"""Latency of the exported graphs against PyTorch, side by side in one process: ViT-B/16 classification at 224,
UperNet ViT-B on one 512 x 512 crop, ViTDet Mask R-CNN ViT-B on the 1024 padded square (backbone, pyramid, RPN with
NMS, RoI heads, mask head). Per row: PyTorch eager fp32, ONNX Runtime fp32 (the file tools/export.py writes) and,
with --compile, torch.compile (the detector compiles its backbone, as train.compile does).

  python benchmarks/bench_export.py                           # CPU, all threads of the machine
  python benchmarks/bench_export.py --threads 2 --rounds 5
  python benchmarks/bench_export.py --device cuda             # PyTorch on the GPU, ONNX Runtime's CUDA provider

Random weights (confident detector heads, so that the RoI heads see a realistic number of boxes); random inputs;
batch 1. Rounds are interleaved (eager, ONNX Runtime, compiled, eager, ...) after a warm-up, and the median is
reported. The exported outputs are compared with eager's once, as the export's self-check does.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROWS = {"cls": ("ViT-B/16 classifier, 224", "configs/cls/imagenet_vit_base.yaml"),
        "seg": ("UperNet ViT-B, one 512 crop", "configs/seg/upernet_vit_base_ade20k.yaml"),
        "det": ("ViTDet Mask R-CNN ViT-B, 1024", "configs/det/mask_rcnn_vit_base_coco.yaml")}


def build(task: str, config: str):
    """(eval-mode PyTorch model, its graph's input size)"""
    import torch

    from maetransfer.config import load_config
    from maetransfer.export.runtime import input_size_of

    cfg = load_config(config, ["model.norm=BN"] if task == "seg" else [])
    torch.manual_seed(0)
    if task == "cls":
        from maetransfer.cls.model import build_classifier
        model = build_classifier(cfg.model, 1000, int(cfg.model.img_size))
    elif task == "seg":
        from maetransfer.seg.segmentor import build_segmentor
        model = build_segmentor(cfg.model)
    else:
        from benchmarks.compare_detectron2 import confident_heads
        from maetransfer.det.model import build_mask_rcnn
        model = build_mask_rcnn(cfg, 80)
        confident_heads(model, 0)
    return model.eval(), input_size_of(task, cfg)[1]


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def bench(task: str, args, folder: Path) -> dict:
    import torch

    from maetransfer.export.exporter import write_graph
    from maetransfer.export.graphs import GRAPHS, example_inputs
    from maetransfer.export.runtime import ExportedGraph

    name, config = ROWS[task]
    model, size = build(task, config)
    device = torch.device(args.device)
    start = time.perf_counter()
    path = write_graph(model, task, size, folder / f"{task}.onnx", meta={"task": task, "version": 1})
    export_s = time.perf_counter() - start
    exported = ExportedGraph(path, device, threads=args.threads)
    inputs = [x[:1] if GRAPHS[task].dynamic_batch else x for x in example_inputs(task, size)]  # batch 1
    graph = GRAPHS[task].wrapper(model).to(device).eval()
    on_device = [x.to(device) for x in inputs]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def eager():
        with torch.no_grad():
            return graph(*on_device)

    runs = {"eager": eager, "onnxruntime": lambda: exported(*inputs)}
    if args.compile:
        compiled = GRAPHS[task].wrapper(model).to(device).eval()
        if task == "det":
            compiled.model.backbone.compile()  # the heads have data-dependent shapes (MaskRCNN.compile)
        else:
            compiled.compile()

        def run_compiled():
            with torch.no_grad():
                return compiled(*on_device)
        runs["compiled"] = run_compiled
    out = eager()
    reference = [y.cpu() for y in (out if isinstance(out, tuple) else (out,))]
    outputs = exported(*inputs)
    difference = max(float((a.float() - b.float()).abs().max()) if a.shape == b.shape else float("inf")
                     for a, b in zip(reference, outputs))
    for fn in runs.values():  # warm-up (compilation, ONNX Runtime's first-run allocations)
        for _ in range(args.warmup):
            fn()
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            times[key].append(timed(fn, sync))
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {"name": name, "export_s": export_s, "difference": difference, **medians}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (0: the machine's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args(argv)
    import onnxruntime
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    args.threads = args.threads or threads
    print(f"device {args.device}, {threads} threads (torch and ONNX Runtime), torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, batch 1, median of {args.rounds} interleaved rounds")
    header = "| model | eager fp32 ms | ONNX Runtime fp32 ms | speed-up |"
    header += " torch.compile ms |" if args.compile else ""
    print(header + " export s | largest output difference |")
    print("|" + "---|" * (header.count("|") + 1))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for task in args.tasks:
            r = bench(task, args, Path(folder))
            rows.append(r)
            line = f"| {r['name']} | {1e3 * r['eager']:.1f} | {1e3 * r['onnxruntime']:.1f} | " \
                   f"{r['eager'] / r['onnxruntime']:.2f}x |"
            line += f" {1e3 * r['compiled']:.1f} |" if args.compile else ""
            print(line + f" {r['export_s']:.1f} | {r['difference']:.2g} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
