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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maetransfer.cli import parse_config, run_tool, tool_parser  # noqa: E402
from maetransfer.cls.train import run  # noqa: E402
from maetransfer.data.cls import DatasetError  # noqa: E402

DEMO_CONFIG = "configs/cls/demo.yaml"


def main(argv=None) -> dict:
    parser = tool_parser(__doc__, DEMO_CONFIG, checkpoint_help="classifier to evaluate (checkpoint.pth, mae_finetuned_vit_*.pth, ...)")
    args, cfg = parse_config(parser, argv)
    cfg.train.output_dir = cfg.train.output_dir or f"output/cls/{Path(args.config).stem}"
    return run_tool(parser, lambda: run(cfg, eval_only=args.eval_only, checkpoint=args.checkpoint), (DatasetError,))


if __name__ == "__main__":
    main()
