#!/usr/bin/env python
"""MAE-pretrained init vs random init, same fine-tuning budget, on the demo classification data (CPU, minutes).

  python benchmarks/bench_cls_init.py                    # configs/cls/demo.yaml as is (30 epochs)
  python benchmarks/bench_cls_init.py train.epochs=60 train.seed=1   # any config override applies to both runs

Both runs use the same config, data, seed and schedule; only train.init_checkpoint differs ('demo' = the encoder of
configs/pretrain/demo.yaml, pretrained on first use, vs '' = the ViT's own random init). Prints the two top-1 /
mean per-class accuracies side by side and writes them to output/bench_cls_init/results.json.
"""
import argparse
import json
from pathlib import Path

from maetransfer.cls.train import run
from maetransfer.config import load_config
from pretrain.demo import resolve_init_checkpoint

CONFIG = "configs/cls/demo.yaml"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/bench_cls_init")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to both runs")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    results = {}
    for name, init in (("mae", "demo"), ("random", "")):
        cfg = load_config(CONFIG, [*args.overrides, f"train.init_checkpoint={init}", f"train.output_dir={out / name}"])
        results[name] = run(cfg, init_checkpoint=init and resolve_init_checkpoint(init))
    cfg_summary = f"{cfg.model.arch}, {cfg.train.epochs} epochs, {cfg.model.img_size} px"
    print(f"\nfine-tuning on the demo data ({cfg_summary}), val top-1 / mean per-class accuracy:")
    print(f"{'init':<22}{'top-1':>8}{'mean/cls':>10}")
    for name, label in (("mae", "MAE-pretrained (demo)"), ("random", "random")):
        r = results[name]
        print(f"{label:<22}{r['top1']:>8.2f}{r['mean_class_acc']:>10.2f}")
    (out / "results.json").write_text(json.dumps({"config": cfg_summary, **results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
