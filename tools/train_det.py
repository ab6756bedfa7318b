#!/usr/bin/env python
"""COCO Mask R-CNN with an MAE ViT backbone (ViTDet recipe). With no arguments: the CPU demo (generated scenes in
COCO format, the demo-pretrained encoder, a few minutes on 2 cores).

  python tools/train_det.py --config configs/det/mask_rcnn_vit_base_coco.yaml data.root=/data/coco \\
      train.init_checkpoint=checkpoints/mae_pretrain_vit_base.pth
  torchrun --nproc_per_node 8 tools/train_det.py --config configs/det/mask_rcnn_vit_base_coco.yaml \\
      train.batch_size=2 train.accum_iter=4
  python tools/train_det.py --config configs/det/mask_rcnn_vit_base_coco.yaml --eval-only \\
      --checkpoint output/det/mask_rcnn_vit_base/checkpoint.pth
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maetransfer.config import ConfigError, load_config  # noqa: E402
from maetransfer.checkpoint import CheckpointError  # noqa: E402
from maetransfer.data.coco import CocoFormatError  # noqa: E402
from maetransfer.det.train import run  # noqa: E402

DEMO_CONFIG = "configs/det/demo.yaml"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEMO_CONFIG, help="YAML recipe (default: the CPU demo)")
    parser.add_argument("--output-dir", help="overrides train.output_dir")
    parser.add_argument("--resume", help="checkpoint.pth to continue from, or 'auto'")
    parser.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint on the val split")
    parser.add_argument("--checkpoint", help="trained detector for --eval-only (this tool's checkpoint.pth)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. train.max_iters=10")
    args = parser.parse_args(argv)
    if args.eval_only and not args.checkpoint:
        parser.error("--eval-only needs --checkpoint (a trained detector, e.g. output/det/.../checkpoint.pth)")
    extra = [f"train.output_dir={args.output_dir}"] if args.output_dir else []
    extra += [f"train.resume={args.resume}"] if args.resume else []
    try:
        cfg = load_config(args.config, [*args.overrides, *extra])
        metrics = run(cfg, eval_only=args.eval_only, checkpoint=args.checkpoint)
    except (ConfigError, CocoFormatError, CheckpointError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if metrics:
        print("  ".join(f"{t} AP {m['AP']:.1f} AP50 {m['AP50']:.1f}" for t, m in metrics.items())
              + f"  -> {Path(cfg.train.output_dir) / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main()
