#!/usr/bin/env python
"""MAE pretraining. With no arguments: the CPU demo (generated scenes, a few minutes on 2 cores).

  python tools/pretrain_mae.py --config configs/pretrain/mae_vit_base.yaml data.root=/data/imagenet/train
  torchrun --nproc_per_node 8 tools/pretrain_mae.py --config configs/pretrain/mae_vit_large.yaml train.accum_iter=8
"""
from maetransfer.cli import TOOL_DEFAULTS, check_output_dir, parse_config, prepare_output, run_tool, tool_parser


def main(argv=None):
    demo_config, output_root = TOOL_DEFAULTS["pretrain_mae"]
    parser = tool_parser(__doc__, demo_config, output_root=output_root)
    _, cfg = parse_config(parser, argv, "pretrain_mae")
    prepare_output(parser, lambda: check_output_dir(cfg, demo_config=demo_config))
    # imported once the command line is parsed: --help needs no torch
    from maetransfer.engine import dist
    from maetransfer.zoo import resolve
    from pretrain.main import run

    def resolve_and_run():  # a released name or hub id becomes its file; the config keeps the name
        init = cfg.train.init_checkpoint and str(resolve(cfg.train.init_checkpoint, bool(cfg.train.unsafe_load)))
        return run(cfg, init_checkpoint=init or None)

    encoder = run_tool(parser, resolve_and_run)
    if dist.is_main_process():
        print(f"encoder written to {encoder} (official mae_pretrain_vit_*.pth layout)")


if __name__ == "__main__":
    main()
