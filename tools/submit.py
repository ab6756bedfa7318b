#!/usr/bin/env python
"""Submit any tool as one Slurm job through submitit (pip install -e ".[slurm]"): one task per GPU on each node, the
tasks one process group. 120 s (--signal-delay) before the time limit, and on preemption, the run writes its checkpoint
and the job is requeued; the requeued job resumes the run. The job's script and logs go to the run's output folder
(<output dir>/slurm; --log-dir for other tools). Everything after the tool's path is the tool's own command line.

  python tools/submit.py --nodes 8 --gpus-per-node 8 --cpus-per-task 10 --mem-gb 320 --time 4320 --partition gpu \\
      tools/pretrain_mae.py --config configs/pretrain/mae_vit_large.yaml data.root=/data/imagenet/train
  python tools/submit.py --nodes 8 --gpus-per-node 8 --time 2880 --dry-run \\
      tools/train_det.py --config configs/det/mask_rcnn_vit_base_coco.yaml data.root=/data/coco \\
      train.init_checkpoint=mae_pretrain_vit_base

To continue a run whose job was cancelled or killed, submit the same command with --resume auto.
Without submitit: sbatch [options] tools/slurm_job.sbatch TOOL [ARGS] runs the same way.
"""
import argparse
import shlex
import sys
from pathlib import Path

from maetransfer.cli import TOOL_DEFAULTS, command_output_dir, number_in


def sbatch_option(text: str):
    key, sep, value = text.partition("=")
    if not key or key.startswith("-"):
        raise argparse.ArgumentTypeError(f"'{text}' is not KEY=VALUE (an sbatch option without its leading --)")
    return key, value if sep else True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    job = parser.add_argument_group("resources")
    job.add_argument("--nodes", type=number_in(int, 1), default=1)
    job.add_argument("--gpus-per-node", type=number_in(int, 0), default=0, help="one task per GPU (0: a CPU job)")
    job.add_argument("--tasks-per-node", type=number_in(int, 1), help="default: --gpus-per-node, or 1 without GPUs")
    job.add_argument("--cpus-per-task", type=number_in(int, 1))
    job.add_argument("--mem-gb", type=number_in(float, 0, open_low=True), help="memory per node")
    job.add_argument("--time", type=number_in(int, 1), default=60, help="time limit in minutes (default 60)")
    job.add_argument("--partition")
    job.add_argument("--account")
    job.add_argument("--qos")
    job.add_argument("--constraint")
    job.add_argument("--comment")
    job.add_argument("--job-name", help="default: the tool's name")
    job.add_argument("--signal-delay", type=number_in(int, 0), default=120,
                     help="seconds before the time limit at which the run checkpoints and requeues (default 120)")
    job.add_argument("--sbatch", type=sbatch_option, action="append", default=[], metavar="KEY=VALUE",
                     help="any other sbatch option, e.g. --sbatch exclusive --sbatch mail-type=END (repeatable)")
    parser.add_argument("--log-dir", help="the job's script and logs (default: <the run's output dir>/slurm)")
    parser.add_argument("--dry-run", action="store_true", help="print the batch script instead of submitting it")
    parser.add_argument("tool", help="tools/<tool>.py")
    parser.add_argument("tool_args", nargs=argparse.REMAINDER, help="the tool's own options and overrides")
    args = parser.parse_args(argv)

    tool = Path(args.tool)
    if not tool.is_file():
        parser.error(f"{tool}: no such tool")
    if tool.stem in TOOL_DEFAULTS:  # checks the tool's config and overrides now, not once the job starts
        log_dir = Path(args.log_dir or command_output_dir(tool.stem, args.tool_args) / "slurm")
    elif args.log_dir:
        log_dir = Path(args.log_dir)
    else:
        parser.error(f"{tool} has no output folder of a run: pass --log-dir")
    try:
        import submitit  # noqa: F401
    except ImportError:
        parser.exit(2, "error: tools/submit.py needs submitit: pip install -e \".[slurm]\" (or submit "
                       "tools/slurm_job.sbatch with sbatch)\n")
    # imported once the command line is parsed: --help needs no torch
    from maetransfer.engine.submission import (JobResources, SubmissionError, ToolJob, sbatch_script, slurm_executor,
                                               task_log)

    resources = JobResources(nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node,
                             cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb, time_min=args.time,
                             partition=args.partition, account=args.account, qos=args.qos,
                             constraint=args.constraint, comment=args.comment, job_name=args.job_name or tool.stem,
                             signal_delay_s=args.signal_delay, sbatch=dict(args.sbatch))
    try:
        executor = slurm_executor(log_dir, resources, dry_run=args.dry_run)
    except SubmissionError as exc:
        parser.exit(1, f"error: {exc}\n")
    command = shlex.join([sys.executable, "-u", str(tool), *args.tool_args])
    if args.dry_run:
        print(f"# would submit: {command}\n# logs: {log_dir}\n{sbatch_script(executor)}")
        return
    submitted = executor.submit(ToolJob(str(tool.resolve()), list(args.tool_args), str(Path.cwd())))
    print(f"submitted job {submitted.job_id}: {command}")
    print(f"follow it with: tail -f {task_log(log_dir, submitted.job_id)}")


if __name__ == "__main__":
    main()
