"""What every tool's command line shares: a config with dotted overrides, output dir, resume, evaluation of a
checkpoint, and one-line errors for bad input. The output folder is checked before anything is written: it must be a
writable folder, and one that holds another run's checkpoint is not trained into unless that run is resumed."""
import argparse
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, Optional, Sequence, Tuple, Type

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, load_config
from .errors import InputError
from .tasks import TOOLS, TaskSpec, declared_task

# torch and everything built on it are imported by the functions that run after the command line is parsed, so that
# `--help` and a bad option answer at once.

# Each training tool (tools/<name>.py, from the task table): its default recipe, the CPU demo, and the folder under
# which its runs go when the config names no output folder (<root>/<config name>). Launchers read it to know where a
# command will write.
TOOL_DEFAULTS: Dict[str, Tuple[str, str]] = {tool: (spec.demo_config, spec.output_root) for tool, spec in TOOLS.items()}

# Bad input the user can fix: reported as one line naming the file, without a traceback.
# Every such error derives from InputError; FileNotFoundError comes from the standard library.
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (InputError, FileNotFoundError)


def number_in(kind: type, low: Optional[float] = None, high: Optional[float] = None, open_low: bool = False,
              open_high: bool = False) -> Callable[[str], float]:
    """An argparse `type` for a number of `kind` within [low, high] (an end open when asked): a value out of range is
    a usage error of one line naming the option, as a wrong type is."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        below = low is not None and (value <= low if open_low else value < low)
        above = high is not None and (value >= high if open_high else value > high)
        if below or above:
            if low is not None and high is not None:
                span = f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
            else:
                span = f"{'above' if open_low else 'at least'} {low}" if low is not None else f"at most {high}"
            raise argparse.ArgumentTypeError(f"{text} must be {span}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


# How long a process that leaves an error to the first process waits before it exits (see ToolParser.exit).
SILENT_EXIT_GRACE_S = 10.0


class ToolParser(argparse.ArgumentParser):
    """The training tools' parser. In a multi-process job every process reads the same command line, config and files
    before the processes join, and fails the same way: its usage errors and one-line errors are then said by the first
    process only (the others exit with the same status, silently). Once they have joined, an error may be one
    process's own, and every process says its own."""

    def error(self, message):
        if _speaks_for_the_job():
            self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def exit(self, status=0, message=None):
        if status and not _speaks_for_the_job():
            # A launcher (torchrun, srun --kill-on-bad-exit) stops the whole job as soon as one process fails: the
            # silent ones leave the first process time to say the error before it is stopped with them.
            time.sleep(SILENT_EXIT_GRACE_S)
            message = None
        super().exit(status, message)


def _speaks_for_the_job() -> bool:
    from .engine import dist  # torch: only on the error path, so that --help stays fast

    return dist.is_dist() or dist.is_main_process()


def tool_parser(doc: str, demo_config: str, checkpoint_help: Optional[str] = None,
                output_root: Optional[str] = None) -> argparse.ArgumentParser:
    """The training tools' command line; `output_root`: where runs go when the config names no output folder."""
    parser = ToolParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=demo_config, help=f"YAML recipe (default: {demo_config}, the CPU demo)")
    default_dir = f"train.output_dir, else {output_root}/<config name>" if output_root else "train.output_dir"
    parser.add_argument("--output-dir", help=f"where the run writes its checkpoint, logs and results (default: "
                                             f"{default_dir})")
    parser.add_argument("--resume", help="checkpoint.pth to continue from, or 'auto' (the output dir's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an output dir that holds another run (train.overwrite=true)")
    if checkpoint_help:
        parser.add_argument("--eval-only", action="store_true", help="evaluate --checkpoint on the val split")
        parser.add_argument("--checkpoint", help=checkpoint_help)
    parser.add_argument("--unsafe-load", action="store_true",
                        help="fully unpickle checkpoints that weights_only loading refuses (only files you trust)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (with the overrides) and exit, writing nothing; "
                             "python -m maetransfer.configs lists the recipes")
    parser.add_argument("overrides", nargs="*", help="dotted key=value config overrides, e.g. train.lr=1e-4")
    return parser


def parse_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None, tool: Optional[str] = None):
    """Parse the command line (overrides may come before or after the options) into (args, resolved config); with
    `tool` (a TOOL_DEFAULTS key), an empty train.output_dir becomes the tool's <root>/<config name>."""
    args = parser.parse_intermixed_args(argv)
    if getattr(args, "eval_only", False) and not args.checkpoint:
        parser.error("--eval-only needs --checkpoint")
    if getattr(args, "checkpoint", None) and not args.eval_only:
        parser.error("--checkpoint is for --eval-only; to start training from weights use train.init_checkpoint=")
    extra = [f"train.output_dir={args.output_dir}"] if args.output_dir else []
    extra += [f"train.resume={args.resume}"] if args.resume else []
    extra += ["train.unsafe_load=true"] if args.unsafe_load else []
    extra += ["train.overwrite=true"] if args.overwrite else []
    try:
        cfg = load_config(args.config, [*args.overrides, *extra])
        if tool is not None:
            _check_task(cfg, args.config, TOOLS[tool])
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    if tool is not None:
        cfg.train.output_dir = cfg.train.output_dir or f"{TOOL_DEFAULTS[tool][1]}/{Path(args.config).stem}"
    if getattr(args, "print_config", False):
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        parser.exit(0)
    return args, cfg


def _check_task(cfg: DictConfig, source: str, spec: TaskSpec) -> None:
    """A tool trains its own task's recipes only."""
    declared = declared_task(cfg, source)
    if declared is not spec:
        raise ConfigError(f"{source}: a recipe for task '{declared.name}' ({declared.title}), which "
                          f"tools/{declared.tool}.py runs, not tools/{spec.tool}.py")


def command_output_dir(tool: str, argv: Sequence[str]) -> Path:
    """The output folder that `tools/<tool>.py argv` writes to, resolved and checked as the tool does before it writes
    anything (a bad config or override, or a folder holding another run, ends the program with the tool's line)."""
    parser = tool_parser(f"tools/{tool}.py", TOOL_DEFAULTS[tool][0], "checkpoint" if TOOLS[tool].transfers else "",
                         TOOL_DEFAULTS[tool][1])
    parser.prog = f"tools/{tool}.py"
    args, cfg = parse_config(parser, argv, tool)
    prepare_output(parser, lambda: check_output_dir(cfg, getattr(args, "eval_only", False), TOOL_DEFAULTS[tool][0]))
    return Path(cfg.train.output_dir)


class OutputPathError(InputError, OSError):
    """An output path that cannot be written: a file where a folder is needed, or no permission."""


class OutputClashError(InputError, ValueError):
    """The output folder holds files this run would write (or two inputs would write the same file)."""


def refuse_earlier_outputs(out: Path, earlier: Sequence[str], run: str, overwrite: bool) -> None:
    """OutputClashError unless `overwrite` when folder `out` holds `earlier`, the files of an earlier `run` (a noun:
    "export"): the tools that write into a folder of the user's choosing never replace earlier files silently."""
    if earlier and not overwrite:
        files, them = ("1 file", "it") if len(earlier) == 1 else (f"{len(earlier)} files", "them")
        raise OutputClashError(f"{out} holds {files} of an earlier {run}, e.g. {earlier[0]}: pass --overwrite to "
                               f"replace {them}, or choose another --output-dir")


def _write_problem(path: Path) -> Optional[str]:
    """Why nothing can be written at folder `path` (it, or its nearest existing parent, is a file or not writable),
    or None."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = ("a file" if not existing.is_dir() else
               "not writable" if not os.access(existing, os.W_OK | os.X_OK) else None)
    if problem is None or existing == path:
        return problem and f"is {problem}"
    return f"cannot be created: {existing} is {problem}"


def check_writable_folder(path, what: str) -> None:
    """OutputPathError (one line naming `what` and `path`) unless `path` is, or can be created as, a writable folder;
    checked up front so that a run does not fail at its first checkpoint."""
    problem = _write_problem(Path(path))
    if problem:
        raise OutputPathError(f"{what} {path} {problem}")


def check_writable_file(path, what: str) -> None:
    """As check_writable_folder, for a file to be written at `path`."""
    path = Path(path)
    if path.is_dir():
        problem = "is a folder"
    elif path.exists():
        problem = None if os.access(path, os.W_OK) else "is not writable"
    else:
        problem = _write_problem(path.parent)
        problem = problem and f"cannot be written: its folder {path.parent} {problem}"
    if problem:
        raise OutputPathError(f"{what} {path} {problem}")


def check_new_output(path, what: str, overwrite: bool, folder: bool = False) -> None:
    """check_writable_file (check_writable_folder with `folder`) and, unless `overwrite`, nothing there yet: a tool
    does not silently replace an earlier output."""
    (check_writable_folder if folder else check_writable_file)(path, what)
    path = Path(path)
    if not overwrite and (path.is_file() or (path.is_dir() and any(path.iterdir()))):
        raise OutputPathError(f"{what} {path} exists: pass --overwrite to replace it, or choose another {what}")


def _run_description(checkpoint: Path) -> str:
    import torch

    try:  # mmap: only the few scalars are read, whatever the size of the weights
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        return f"{checkpoint.name} at iteration {int(state['iter'])}"
    except Exception:  # an unreadable checkpoint is still another run's file
        return checkpoint.name


def check_output_dir(cfg: DictConfig, eval_only: bool = False, demo_config: Optional[str] = None) -> None:
    """Before anything is written to train.output_dir: it must be a writable folder; a training run does not
    overwrite another run's checkpoint (and config, log) unless it resumes it or train.overwrite is set, and a
    requeued Slurm job resumes the run in its output folder; --eval-only
    into a folder that holds a training run writes its config and results to the folder's eval/ instead. The output
    folder of `demo_config` itself is the demo's: running the demo again starts it over there."""
    from .engine import CHECKPOINT_NAME, dist, slurm
    from .engine.checkpointing import check_resume_file

    out = Path(cfg.train.output_dir)
    check_writable_folder(out, "output folder")
    checkpoint = out / CHECKPOINT_NAME
    if eval_only:
        if checkpoint.is_file() or (out / "log.jsonl").is_file():
            cfg.train.output_dir = str(out / "eval")
            if dist.is_main_process():
                print(f"{out} holds a training run: the evaluation writes to {cfg.train.output_dir}")
        return
    if checkpoint.is_file() and slurm.requeued():
        cfg.train.resume = "auto"  # a requeued job continues its own run, whatever its command line said
    resume = cfg.train.resume
    resumes_it = resume == "auto" or (resume and Path(resume).resolve() == checkpoint.resolve())
    demos_own = demo_config is not None and out.resolve() == Path(load_config(demo_config).train.output_dir).resolve()
    if checkpoint.is_file() and not resumes_it and not cfg.train.overwrite and not demos_own:
        raise ConfigError(f"{out} holds a run ({_run_description(checkpoint)}): resume it with --resume auto, choose "
                          "another --output-dir, or pass --overwrite to start over there")
    if resume and resume != "auto":
        check_resume_file(Path(resume))  # before the demo encoder's pretraining, downloads or data


def check_demo_data(cfg: DictConfig, demo_config: str) -> None:
    """data.demo=true generates the demo set, and only into the demo's own folder: a config derived from a demo config
    with its own data.root must not have generated scenes written into (or over) that folder."""
    demo_root = load_config(demo_config).data.root
    if cfg.data.demo and Path(cfg.data.root).resolve() != Path(demo_root).resolve():
        raise ConfigError(f"data.demo=true generates the demo set into {demo_root} only, but data.root is "
                          f"{cfg.data.root}: pass data.demo=false to use the data there")


def prepare_output(parser: argparse.ArgumentParser, checks: Callable[[], None]) -> None:
    """Run the up-front `checks`; a problem ends the program with one line and exit 2, as a command-line error."""
    try:
        checks()
    except InputError as exc:
        parser.exit(2, f"error: {exc}\n")


def _worker_message(exc: BaseException) -> str:
    """The original message of an exception that torch re-raised from a DataLoader worker ('Caught X in DataLoader
    worker process N.' + the worker's traceback, whose last line is 'module.X: message'); other messages as they are."""
    message = str(exc)
    if not message.startswith(f"Caught {type(exc).__name__} in DataLoader worker process"):
        return message
    cls = type(exc)
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    _, found, original = message.rpartition(f"\n{name}: ")
    return original.strip() if found else message


def run_tool(parser: argparse.ArgumentParser, fn: Callable[[], object],
             errors: Tuple[Type[BaseException], ...] = ()):
    """Run `fn`; bad input ends the program with one line (exit 1) instead of a traceback, the same line whether it
    was raised in the main process or in a DataLoader worker. A run stopped by a signal (its checkpoint written and
    the stop announced by the engine) exits with 128 + the signal's number."""
    from .engine import RunStopped

    try:
        return fn()
    except (*INPUT_ERRORS, *errors) as exc:
        parser.exit(1, f"error: {_worker_message(exc)}\n")
    except RunStopped as stopped:
        parser.exit(stopped.exit_code)


def check_checkpoint_task(path: str, spec: TaskSpec, unsafe: bool) -> None:
    """CheckpointError (one line) when the trained model in `path` is another task's (by the heads it holds; an
    exported model says its task itself, checked when it is opened)."""
    from .checkpoint import CheckpointError, read_raw, unwrap_state
    from .export.runtime import is_exported
    from .predict.base import checkpoint_task
    from .tasks import TASKS

    if is_exported(path):
        return
    obj, _ = read_raw(path, unsafe, mmap=True)  # mapped, not read: only the names are looked at
    held = checkpoint_task(unwrap_state(obj, path)[0])
    if held not in (None, spec.name):
        raise CheckpointError(f"{path}: a {TASKS[held].noun} model, but tools/{spec.tool}.py evaluates "
                              f"{spec.noun} models (use tools/{TASKS[held].tool}.py)")


def run_transfer_tool(doc: str, tool: str, checkpoint_help: str, demo_encoder: Callable[[], ModuleType],
                      argv: Optional[Sequence[str]] = None):
    """The main() of the transfer tools (train_det / train_seg / train_cls: `tool`): parse, default the output dir to
    <the tool's root>/<config name>, check it, import the task (the task table's `task_class`), turn the checkpoint
    specs into files (`--checkpoint` with the zoo; train.init_checkpoint with `demo_encoder()`'s
    `resolve_init_checkpoint`, where 'demo' is the demo-pretrained encoder, pretrained first when missing: the tools
    pass `pretrain.demo`, which this package does not import), then run it with its stages announced in order; returns
    (resolved config, what the run returned: its results on the main process, {} on the others)."""
    spec = TOOLS[tool]
    parser = tool_parser(doc, spec.demo_config, checkpoint_help, spec.output_root)
    args, cfg = parse_config(parser, argv, tool)
    prepare_output(parser, lambda: (check_demo_data(cfg, spec.demo_config),
                                    check_output_dir(cfg, args.eval_only, spec.demo_config)))
    from . import zoo
    from .engine import dist, progress, run_task

    task_class, demo = spec.load("task_class"), demo_encoder()
    stages = ["evaluate"] if args.eval_only else ["train", "evaluate"]
    if not args.eval_only and demo.pretrains_demo_encoder(cfg.train.init_checkpoint):
        stages.insert(0, "pretrain")
    unsafe = bool(cfg.train.unsafe_load)

    def resolve_and_run():  # the files the specs name; the config keeps the specs
        task_class.check_data(cfg, args.eval_only)  # seconds, before downloads or the demo encoder's pretraining
        init_spec = cfg.train.init_checkpoint
        init = demo.resolve_init_checkpoint(init_spec, unsafe) if init_spec and not args.eval_only else None
        checkpoint = str(zoo.resolve(args.checkpoint, unsafe)) if args.checkpoint else None
        if checkpoint:
            check_checkpoint_task(checkpoint, spec, unsafe)  # before demo data is written or a model built
        return run_task(task_class(cfg), eval_only=args.eval_only, checkpoint=checkpoint, init_checkpoint=init)

    start = time.time()
    with progress.planned_stages(stages):
        result = run_tool(parser, resolve_and_run, task_class.input_errors)
    if dist.is_main_process():
        print(f"finished in {progress.format_duration(time.time() - start)}; outputs in {cfg.train.output_dir}")
    return cfg, result
