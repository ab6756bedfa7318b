#!/usr/bin/env python
"""Classification transfer: fine-tune, linear-probe or partially fine-tune a pretrained ViT, or evaluate a classifier.
With no arguments: the CPU demo (the demo-pretrained encoder fine-tuned on generated scenes, a few minutes).

  python tools/train_cls.py --config configs/cls/inat2018_vit_base.yaml data.root=/data/inat2018 \\
      train.init_checkpoint=mae_pretrain_vit_base.pth
  torchrun --nproc_per_node 8 tools/train_cls.py --config configs/cls/imagenet_linprobe_vit_large.yaml ...
  python tools/train_cls.py --config configs/cls/imagenet_vit_base.yaml --eval-only \\
      --checkpoint mae_finetuned_vit_base.pth data.root=/data/imagenet
Writes config.yaml, checkpoint.pth, log.jsonl, tb/, metrics.json and per_class_accuracy.csv to the output folder
(default output/cls/<config name>).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maetransfer.cls.train import run  # noqa: E402
from maetransfer.checkpoint import CheckpointError  # noqa: E402
from maetransfer.config import ConfigError, load_config  # noqa: E402
from maetransfer.data.cls import DatasetError  # noqa: E402

DEMO_CONFIG = "configs/cls/demo.yaml"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEMO_CONFIG, help="YAML recipe (default: the CPU demo)")
    parser.add_argument("--output-dir", help="overrides train.output_dir")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint on the val split, no training")
    parser.add_argument("--checkpoint", help="classifier to evaluate (checkpoint.pth, mae_finetuned_vit_*.pth, ...)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. train.epochs=1")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after the options
    if args.eval_only and not args.checkpoint:
        parser.error("--eval-only needs --checkpoint (a classifier: checkpoint.pth, mae_finetuned_vit_*.pth, ...)")
    if args.checkpoint and not args.eval_only:
        parser.error("--checkpoint is for --eval-only; to start training from weights use train.init_checkpoint=")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    cfg.train.output_dir = args.output_dir or cfg.train.output_dir or f"output/cls/{Path(args.config).stem}"
    try:
        return run(cfg, eval_only=args.eval_only, checkpoint=args.checkpoint)
    except (ConfigError, DatasetError, CheckpointError) as exc:
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
