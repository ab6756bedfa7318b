"""The work of tools/export.py once its arguments are parsed: the config, the checks that need no model (exit 2),
the export and its self-check with a one-line error for bad input (exit 1), and a summary of what was written."""
import argparse
import time
from pathlib import Path

from ..cli import prepare_output, run_tool
from ..config import ConfigError, load_config
from ..engine import progress
from ..predict.base import task_of
from .exporter import METADATA_FILE, check_output, export
from .runtime import MODEL_FILES


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    start = time.time()
    try:
        cfg = load_config(args.config, args.overrides)
        task = task_of(cfg, args.config)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    out = Path(args.output_dir)
    prepare_output(parser, lambda: check_output(out, args.overwrite))
    meta = run_tool(parser, lambda: export(cfg, args.checkpoint, out, args.format, args.opset, args.image,
                                           args.overwrite, args.unsafe_load, args.class_names, args.config))
    check = meta["check"]
    print(f"{task} model exported to {out / MODEL_FILES[args.format]} in "
          f"{progress.format_duration(time.time() - start)}; equal to PyTorch: {check['summary']} "
          f"(figures in {out / METADATA_FILE})")
    return meta
