#!/usr/bin/env python
"""COCO Mask R-CNN with an MAE ViT backbone (ViTDet recipe). With no arguments: the CPU demo (generated scenes in
COCO format, the demo-pretrained encoder, a few minutes on 2 cores).

  python tools/train_det.py --config configs/det/mask_rcnn_vit_base_coco.yaml data.root=/data/coco \\
      train.init_checkpoint=mae_pretrain_vit_base
  torchrun --nproc_per_node 8 tools/train_det.py --config configs/det/mask_rcnn_vit_base_coco.yaml \\
      train.batch_size=2 train.accum_iter=4
  python tools/train_det.py --config configs/det/mask_rcnn_vit_base_coco.yaml --eval-only \\
      --checkpoint output/det/mask_rcnn_vit_base/checkpoint.pth
"""
from pathlib import Path

from maetransfer.cli import run_transfer_tool


def demo_encoder():  # imported once the command line is parsed: --help needs no torch
    import pretrain.demo
    return pretrain.demo


def main(argv=None) -> dict:
    cfg, metrics = run_transfer_tool(__doc__, "train_det", "trained detector for --eval-only (this tool's "
                                     "checkpoint.pth, a ViTDet file, a released name)", demo_encoder, argv)
    if metrics:
        print("  ".join(f"{t} AP {m['AP']:.1f} AP50 {m['AP50']:.1f}" for t, m in metrics.items())
              + f"  -> {Path(cfg.train.output_dir) / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    main()
