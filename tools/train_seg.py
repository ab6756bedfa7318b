#!/usr/bin/env python
"""Semantic segmentation transfer: UperNet with an MAE-pretrained ViT on ADE20K (mmseg recipe), or evaluate one.
With no arguments: the CPU demo (the demo-pretrained encoder fine-tuned on generated scenes, a few minutes).

  torchrun --nproc_per_node 8 tools/train_seg.py --config configs/seg/upernet_vit_base_ade20k.yaml \\
      data.root=/data/ADEChallengeData2016 train.init_checkpoint=mae_pretrain_vit_base.pth
  python tools/train_seg.py --config configs/seg/upernet_vit_base_ade20k.yaml --eval-only \\
      --checkpoint output/seg/upernet_vit_base_ade20k/checkpoint.pth eval.multi_scale=true eval.flip=true
Writes config.yaml, checkpoint.pth, log.jsonl, tb/, metrics.json (mIoU / mAcc / aAcc and per-class IoU / Acc) and
vis/*.png (image | ground truth | prediction) to the output folder (default output/seg/<config name>).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maetransfer.config import ConfigError, load_config  # noqa: E402
from maetransfer.seg.train import run  # noqa: E402

DEMO_CONFIG = "configs/seg/demo.yaml"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEMO_CONFIG, help="YAML recipe (default: the CPU demo)")
    parser.add_argument("--output-dir", help="overrides train.output_dir")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint on the val split, no training")
    parser.add_argument("--checkpoint", help="segmentor to evaluate (checkpoint.pth or an mmseg UperNet-MAE file)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. train.max_iters=100")
    args = parser.parse_args(argv)
    if args.checkpoint and not args.eval_only:
        parser.error("--checkpoint is for --eval-only; to start training from weights use train.init_checkpoint=")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    cfg.train.output_dir = args.output_dir or cfg.train.output_dir or f"output/seg/{Path(args.config).stem}"
    try:
        return run(cfg, eval_only=args.eval_only, checkpoint=args.checkpoint)
    except (ValueError, FileNotFoundError) as exc:  # bad data or checkpoint: one line naming the file
        parser.exit(1, f"error: {exc}\n")


if __name__ == "__main__":
    main()
