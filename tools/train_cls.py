#!/usr/bin/env python
"""Classification transfer: fine-tune, linear-probe or partially fine-tune a pretrained ViT, or evaluate a classifier.
With no arguments: the CPU demo (the demo-pretrained encoder fine-tuned on generated scenes, a few minutes).

  python tools/train_cls.py --config configs/cls/inat2018_vit_base.yaml data.root=/data/inat2018 \\
      train.init_checkpoint=mae_pretrain_vit_base
  torchrun --nproc_per_node 8 tools/train_cls.py --config configs/cls/imagenet_linprobe_vit_large.yaml ...
  python tools/train_cls.py --config configs/cls/imagenet_vit_base.yaml --eval-only \\
      --checkpoint mae_finetuned_vit_base data.root=/data/imagenet
Writes config.yaml, checkpoint.pth, log.jsonl, tb/, metrics.json and per_class_accuracy.csv to the output folder
(default output/cls/<config name>).
"""
import sys
from pathlib import Path

if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    del sys.path[0]  # the folder of this script, where tools/pretrain.py would shadow the pretrain package

from maetransfer.cli import ToolTask, run_transfer_tool


def classification() -> ToolTask:  # imported once the command line is parsed: --help needs no torch
    from maetransfer.cls.train import run
    from maetransfer.data.cls import DatasetError
    from pretrain.demo import pretrains_demo_encoder, resolve_init_checkpoint
    return ToolTask(run, (DatasetError,), resolve_init_checkpoint, pretrains_demo_encoder)


def main(argv=None) -> dict:
    return run_transfer_tool(__doc__, "train_cls", "classifier to evaluate (checkpoint.pth, mae_finetuned_vit_*.pth, "
                             "a released name)", classification, argv)[1]


if __name__ == "__main__":
    main()
