#!/usr/bin/env python
"""Semantic segmentation transfer: UperNet with an MAE-pretrained ViT on ADE20K (mmseg recipe), or evaluate one.
With no arguments: the CPU demo (the demo-pretrained encoder fine-tuned on generated scenes, a few minutes).

  torchrun --nproc_per_node 8 tools/train_seg.py --config configs/seg/upernet_vit_base_ade20k.yaml \\
      data.root=/data/ADEChallengeData2016 train.init_checkpoint=mae_pretrain_vit_base
  python tools/train_seg.py --config configs/seg/upernet_vit_base_ade20k.yaml --eval-only \\
      --checkpoint output/seg/upernet_vit_base_ade20k/checkpoint.pth eval.multi_scale=true eval.flip=true
Writes config.yaml, checkpoint.pth, log.jsonl, tb/, metrics.json (mIoU / mAcc / aAcc and per-class IoU / Acc) and
vis/*.png (image | ground truth | prediction) to the output folder (default output/seg/<config name>).
"""
from maetransfer.cli import run_transfer_tool


def demo_encoder():  # imported once the command line is parsed: --help needs no torch
    import pretrain.demo
    return pretrain.demo


def main(argv=None) -> dict:
    return run_transfer_tool(__doc__, "train_seg", "segmentor to evaluate (checkpoint.pth, an mmseg UperNet-MAE "
                             "file or released name)", demo_encoder, argv)[1]


if __name__ == "__main__":
    main()
