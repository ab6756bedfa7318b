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
from maetransfer.cli import run_transfer_tool


def demo_encoder():  # imported once the command line is parsed: --help needs no torch
    import pretrain.demo
    return pretrain.demo


def main(argv=None) -> dict:
    return run_transfer_tool(__doc__, "train_cls", "classifier to evaluate (checkpoint.pth, mae_finetuned_vit_*.pth, "
                             "a released name)", demo_encoder, argv)[1]


if __name__ == "__main__":
    main()
