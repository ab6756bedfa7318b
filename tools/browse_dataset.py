#!/usr/bin/env python
"""Look at a data set as training reads it: the ground truth drawn on its images (detection: masks, boxes and class
names; segmentation: the label map in the class colours, with a legend; classification: the class name), optionally
after the task's training augmentation (--augmented: what the model will see), and the whole split checked for
problems (a label out of range, a box outside its image, an image with no annotation, a class with no instance, a
missing image ...), listed in one summary at the end: printed, and written as problems.json in the output folder.

  python tools/browse_dataset.py --config configs/det/mask_rcnn_vit_base_coco.yaml data.root=/data/coco \\
      --output-dir browse/coco -n 20
  python tools/browse_dataset.py --config configs/seg/upernet_vit_base_ade20k.yaml --split val \\
      data.root=/data/ADEChallengeData2016 --output-dir browse/ade --augmented
  python tools/browse_dataset.py --config configs/cls/demo.yaml --output-dir browse/cls

Pictures are named <index in the split>_<image name>[_augmented].png; small images are enlarged by a whole factor.
"""
import argparse

# Parsed before torch is imported, so that --help and usage errors answer at once.
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", required=True, help="a detection, segmentation or classification recipe (or a run's "
                                                    "config.yaml)")
parser.add_argument("--output-dir", required=True, help="folder for the pictures and problems.json")
parser.add_argument("--split", default="train", choices=("train", "val"), help="which split (default: train)")
parser.add_argument("--augmented", action="store_true", help="draw the samples after the task's training transform")
parser.add_argument("-n", "--num", type=int, default=16, help="pictures to write, from the start of the split "
                                                              "(default 16; 0: every image)")
parser.add_argument("--overwrite", action="store_true", help="replace the pictures and problems.json of an earlier "
                                                             "browse in --output-dir")
parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation's random draws (default 0)")
parser.add_argument("--workers", type=int, default=2, help="segmentation: processes reading the label maps for the "
                                                           "checks (default 2)")
parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. data.root=/data/coco")


def main(argv=None) -> dict:
    args = parser.parse_intermixed_args(argv)
    if args.num < 0:
        parser.error("-n must be 0 (every image) or more")
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    from pathlib import Path

    from maetransfer.cli import check_demo_data, prepare_output
    from maetransfer.config import ConfigError, load_config
    from maetransfer.tasks import declared_task

    try:
        cfg = load_config(args.config, args.overrides)
        spec = declared_task(cfg, args.config)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    if spec.name not in ("det", "seg", "cls"):
        parser.exit(2, f"error: {args.config} is a {spec.noun} recipe: this tool shows the data sets of detection, "
                       "segmentation and classification recipes\n")
    from maetransfer.cli import run_tool
    from maetransfer.browse import browse, check_outputs

    out = Path(args.output_dir)
    prepare_output(parser, lambda: (check_demo_data(cfg, spec.demo_config), check_outputs(out, args.overwrite)))

    def run():
        if cfg.data.demo:  # the demo recipes generate their data set on first use, as their training does
            spec.load("task_class")(cfg).prepare_data()
        return browse(cfg, spec.name, args.split, out, args.num, args.augmented, args.seed, args.workers, args.config)

    return run_tool(parser, run)


if __name__ == "__main__":
    main()
