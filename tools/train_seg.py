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
import sys
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # the folder of this script, where tools/pretrain.py would shadow the pretrain package

from maetransfer.cli import ToolTask, run_transfer_tool


def segmentation() -> ToolTask:  # imported once the command line is parsed: --help needs no torch
    from maetransfer.seg.train import run
    from pretrain.demo import pretrains_demo_encoder, resolve_init_checkpoint
    return ToolTask(run, (ValueError,), resolve_init_checkpoint, pretrains_demo_encoder)


def main(argv=None) -> dict:
    return run_transfer_tool(__doc__, "train_seg", "segmentor to evaluate (checkpoint.pth, an mmseg UperNet-MAE "
                             "file or released name)", segmentation, argv)[1]


if __name__ == "__main__":
    main()
