"""What every tool's command line shares: a config with dotted overrides, output dir, resume, evaluation of a
checkpoint, and one-line errors for bad input."""
import argparse
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Type

from .config import ConfigError, load_config
from .errors import InputError
from .engine import dist, progress

# Bad input the user can fix: reported as one line naming the file, without a traceback.
# Every such error derives from InputError; FileNotFoundError comes from the standard library.
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (InputError, FileNotFoundError)


def tool_parser(doc: str, demo_config: str, checkpoint_help: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=demo_config, help="YAML recipe (default: the CPU demo)")
    parser.add_argument("--output-dir", help="overrides train.output_dir")
    parser.add_argument("--resume", help="checkpoint.pth to continue from, or 'auto' (the output dir's)")
    if checkpoint_help:
        parser.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint on the val split")
        parser.add_argument("--checkpoint", help=checkpoint_help)
    parser.add_argument("--unsafe-load", action="store_true",
                        help="fully unpickle checkpoints that weights_only loading refuses (only files you trust)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. train.lr=1e-4")
    return parser


def parse_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """Parse the command line (overrides may come before or after the options) into (args, resolved config)."""
    args = parser.parse_intermixed_args(argv)
    if getattr(args, "eval_only", False) and not args.checkpoint:
        parser.error("--eval-only needs --checkpoint")
    if getattr(args, "checkpoint", None) and not args.eval_only:
        parser.error("--checkpoint is for --eval-only; to start training from weights use train.init_checkpoint=")
    extra = [f"train.output_dir={args.output_dir}"] if args.output_dir else []
    extra += [f"train.resume={args.resume}"] if args.resume else []
    extra += ["train.unsafe_load=true"] if args.unsafe_load else []
    try:
        return args, load_config(args.config, [*args.overrides, *extra])
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")


def run_tool(parser: argparse.ArgumentParser, fn: Callable[[], object],
             errors: Tuple[Type[BaseException], ...] = ()):
    """Run `fn`; bad input ends the program with one line (exit 1) instead of a traceback."""
    try:
        return fn()
    except (*INPUT_ERRORS, *errors) as exc:
        parser.exit(1, f"error: {exc}\n")


def run_transfer_tool(doc: str, demo_config: str, checkpoint_help: str, run: Callable, output_root: str,
                      errors: Tuple[Type[BaseException], ...] = (), argv: Optional[Sequence[str]] = None):
    """The main() of train_det / train_seg / train_cls: parse, default the output dir to <output_root>/<config
    name>, then `run(cfg, eval_only=..., checkpoint=...)` with its stages announced in order; returns (resolved
    config, what run returned)."""
    from pretrain.demo import pretrains_demo_encoder  # here: pretrain imports this package

    parser = tool_parser(doc, demo_config, checkpoint_help)
    args, cfg = parse_config(parser, argv)
    cfg.train.output_dir = cfg.train.output_dir or f"{output_root}/{Path(args.config).stem}"
    stages = ["evaluate"] if args.eval_only else ["train", "evaluate"]
    if not args.eval_only and pretrains_demo_encoder(cfg.train.init_checkpoint):
        stages.insert(0, "pretrain")
    start = time.time()
    with progress.planned_stages(stages):
        result = run_tool(parser, lambda: run(cfg, eval_only=args.eval_only, checkpoint=args.checkpoint), errors)
    if dist.is_main_process():
        print(f"finished in {progress.format_duration(time.time() - start)}; outputs in {cfg.train.output_dir}")
    return cfg, result

