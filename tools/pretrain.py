#!/usr/bin/env python
"""MAE pretraining. With no arguments: the CPU demo (generated scenes, a few minutes on 2 cores).

  python tools/pretrain.py --config configs/pretrain/mae_vit_base.yaml data.root=/data/imagenet/train
  torchrun --nproc_per_node 8 tools/pretrain.py --config configs/pretrain/mae_vit_large.yaml train.accum_iter=8
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maetransfer.config import ConfigError, load_config  # noqa: E402
from pretrain.demo import DEMO_CONFIG, write_demo_images  # noqa: E402
from pretrain.main import run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEMO_CONFIG, help="YAML recipe (default: the CPU demo)")
    parser.add_argument("--output-dir", help="overrides train.output_dir")
    parser.add_argument("--resume", help="checkpoint.pth to continue from, or 'auto'")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. train.epochs=1")
    args = parser.parse_args(argv)
    extra = [f"train.output_dir={args.output_dir}"] if args.output_dir else []
    extra += [f"train.resume={args.resume}"] if args.resume else []
    try:
        cfg = load_config(args.config, [*args.overrides, *extra])
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    if Path(args.config).name == Path(DEMO_CONFIG).name and not Path(cfg.data.root).exists():
        write_demo_images(cfg.data.root, size=cfg.model.img_size)  # the demo's generated scenes, first run only
    encoder = run(cfg)
    print(f"encoder written to {encoder} (official mae_pretrain_vit_*.pth layout)")


if __name__ == "__main__":
    main()
