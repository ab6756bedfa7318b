#!/usr/bin/env python
"""MAE pretraining. With no arguments: the CPU demo (generated scenes, a few minutes on 2 cores).

  python tools/pretrain.py --config configs/pretrain/mae_vit_base.yaml data.root=/data/imagenet/train
  torchrun --nproc_per_node 8 tools/pretrain.py --config configs/pretrain/mae_vit_large.yaml train.accum_iter=8
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maetransfer.cli import parse_config, run_tool, tool_parser  # noqa: E402
from maetransfer.engine import dist  # noqa: E402
from pretrain.demo import DEMO_CONFIG, write_demo_images  # noqa: E402
from pretrain.main import run  # noqa: E402


def main(argv=None):
    parser = tool_parser(__doc__, DEMO_CONFIG)
    args, cfg = parse_config(parser, argv)
    if Path(args.config).name == Path(DEMO_CONFIG).name and not Path(cfg.data.root).exists():
        write_demo_images(cfg.data.root, size=cfg.model.img_size)  # the demo's generated scenes, first run only
    encoder = run_tool(parser, lambda: run(cfg))
    if dist.is_main_process():
        print(f"encoder written to {encoder} (official mae_pretrain_vit_*.pth layout)")


if __name__ == "__main__":
    main()
