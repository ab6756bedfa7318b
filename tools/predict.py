#!/usr/bin/env python
"""Run a trained model on your own images and write pictures a person can read and files a program can use. The
task comes from the config; the checkpoint is anything that task's --eval-only takes (this project's checkpoint.pth,
a detectron2 ViTDet .pth/.pkl, an mmseg UperNet, an official fine-tuned classifier, a released name).

  python tools/predict.py --config configs/det/demo.yaml --checkpoint output/demo/det/checkpoint.pth \\
      output/demo/data/coco/val2017 --output-dir output/demo/predict/det
  python tools/predict.py --config configs/det/mask_rcnn_vit_base_coco.yaml --checkpoint mask_rcnn_vitdet_b_100ep \\
      photos/ --output-dir predictions/ --score-thresh 0.5

Writes into --output-dir, per image, a PNG of the same name (detection: masks, boxes, class names and scores;
segmentation: colour overlay and legend, plus the label map under labels/; classification: the top labels), and
predictions.json (detection: COCO results with file names; segmentation: classes per image; classification: top-k,
also as predictions.csv).
"""
import argparse
import os
import re

from maetransfer.cli import number_in

# Parsed before torch is imported, so that --help and usage errors answer at once.
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively) or glob "
                                                               "patterns (quoted), and dotted key=value overrides of "
                                                               "the config (e.g. eval.mode=whole)")
parser.add_argument("--config", required=True, help="the model's recipe, e.g. configs/det/demo.yaml or a run's "
                                                    "config.yaml")
parser.add_argument("--checkpoint", required=True, help="trained model: a file or a released name "
                                                        "(python -m maetransfer.zoo)")
parser.add_argument("--output-dir", required=True, help="folder for the pictures and predictions")
parser.add_argument("--overwrite", action="store_true", help="replace files of an earlier run in --output-dir")
parser.add_argument("--score-thresh", type=number_in(float, 0, 1), help="detection: lowest score kept (default 0.5)")
parser.add_argument("--topk", type=number_in(int, 1), help="classification: labels per image (default 5)")
parser.add_argument("--class-names", help="text file of one class name per line, replacing the checkpoint's")
parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                    help="autocast dtype (default: fp32, as evaluation)")
parser.add_argument("--batch-size", type=number_in(int, 1),
                    help="images per forward pass (default: the config's eval.batch_size, else 1)")
parser.add_argument("--workers", type=number_in(int, 0), default=2, help="processes reading images (default 2)")
parser.add_argument("--unsafe-load", action="store_true",
                    help="fully unpickle checkpoints that weights_only loading refuses (only files you trust)")


OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")  # a dotted key=value, as the training tools take


def main(argv=None):
    args = parser.parse_intermixed_args(argv)
    # key=value words are config overrides unless a file of that name exists
    overrides = [word for word in args.inputs if OVERRIDE.match(word) and not os.path.exists(word)]
    args.inputs = [word for word in args.inputs if word not in overrides]
    if not args.inputs:
        parser.error("no images given (only key=value overrides)")
    from maetransfer.config import ConfigError, load_config
    from maetransfer.predict import task_of
    from maetransfer.predict.tool import run

    try:
        cfg = load_config(args.config, overrides)
        task = task_of(cfg, args.config)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    return run(parser, args, cfg, task)


if __name__ == "__main__":
    main()
