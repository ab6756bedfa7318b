#!/usr/bin/env python
"""Dynamic int8 quantisation of an exported classifier: ONNX Runtime's `quantize_dynamic` (int8 weights of MatMul and
Gemm, activations quantised per batch at run time) of the `model.onnx` that tools/export.py wrote, then the fp32 and
the int8 file side by side: size, top-1 / top-5 on the config's validation set (through --eval-only's evaluation) and
latency per image.

  python tools/export.py --config configs/cls/demo.yaml --checkpoint output/demo/cls/checkpoint.pth \\
      --output-dir output/demo/export/cls
  python benchmarks/bench_quantize.py --export output/demo/export/cls

The int8 file keeps the export's metadata, so `tools/train_cls.py --eval-only` and `tools/predict.py` take it too; it
is not written by tools/export.py, whose check (logits within 1e-3) a quantised model does not pass.
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="a folder written by tools/export.py for a classifier")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: the machine's)")
    parser.add_argument("--rounds", type=int, default=20, help="timed single-image runs per file")
    args = parser.parse_args(argv)
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from maetransfer.cls.train import run
    from maetransfer.config import load_config
    from maetransfer.export.graphs import example_inputs
    from maetransfer.export.runtime import ExportedGraph

    folder = Path(args.export)
    cfg = load_config(folder / "config.yaml")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "model_int8.onnx"
        quantize_dynamic(str(folder / "model.onnx"), str(int8), weight_type=QuantType.QInt8)
        for name, path in (("fp32", folder / "model.onnx"), ("int8 dynamic", int8)):
            cfg.train.output_dir = str(Path(tmp) / name.split()[0])
            metrics = run(cfg, eval_only=True, checkpoint=str(path))
            graph = ExportedGraph(path, threads=args.threads)
            image = example_inputs("cls", graph.meta["input_size"])[0][:1]
            graph(image)  # warm-up
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                graph(image)
                times.append(time.perf_counter() - start)
            rows.append((name, path.stat().st_size / 2 ** 20, metrics["top1"], metrics.get("top5"),
                         1e3 * statistics.median(times)))
    print(f"{folder / 'model.onnx'}: {cfg.data.root}, {rows[0][2]:.2f} top-1 in fp32; torch {torch.__version__}")
    print("| model | size MB | top-1 | top-5 | ms per image (batch 1, median) |")
    print("|---|---|---|---|---|")
    for name, size, top1, top5, ms in rows:
        print(f"| {name} | {size:.2f} | {top1:.2f} | {top5 if top5 is None else f'{top5:.2f}'} | {ms:.2f} |")
    return rows


if __name__ == "__main__":
    main()
