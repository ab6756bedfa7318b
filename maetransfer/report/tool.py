"""The body of tools/transfer_report.py, imported once its command line has parsed: check every job's command,
run the jobs (here one after another, or on Slurm all at once), write the report after each change."""
import argparse
import contextlib
import io
import shlex
import time
from pathlib import Path
from typing import Dict, List

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from ..cli import check_writable_folder, command_output_dir
from ..engine.progress import format_duration
from ..errors import InputError
from ..tasks import TOOLS
from .render import JobView, collect, write_report
from .runner import (DONE, FAILED, QUEUED, RUNNING, StopRequested, Job, check_same_command, job_state, plan,
                     read_record, run_local, submit_slurm, wait_for_earlier_process)
from .suite import (RESOURCE_KEYS, Encoder, Suite, SuiteError, check_encoder, check_encoders, load_suite,
                    parse_data_roots, parse_encoder)


def slurm_settings(items: List[str]) -> Dict:
    """--slurm KEY=VALUE items, typed as YAML (nodes=2 is a number); KEY one of the JobResources fields."""
    settings = {}
    for text in items:
        key, sep, _ = text.partition("=")
        if not sep or key not in RESOURCE_KEYS:
            raise SuiteError(f"--slurm {text}: not KEY=VALUE with KEY one of {', '.join(sorted(RESOURCE_KEYS))}")
        settings[key] = OmegaConf.to_container(OmegaConf.from_dotlist([text]))[key]
    return settings


def _result_text(view: JobView) -> str:
    if view.state != DONE:
        return "" if view.status() == view.state else view.status()
    task = TOOLS[view.job.spec.tool]
    titles = dict(task.metrics)
    found = [(titles[k], view.metrics.get(k)) for k in task.headline] if view.metrics else []
    return "  ".join(f"{t} {v:.2f}" for t, v in found if v is not None) or "done, no metrics.json"


def print_status(views: List[JobView], out: Path) -> None:
    width = max(len(v.job.id) for v in views)
    print(f"report folder {out}")
    for view in views:
        wall = format_duration(view.wall_s) if view.wall_s else ""
        where = f"  log {view.record['log']}" if view.state in (RUNNING, QUEUED) and view.record.get("log") else ""
        print(f"{view.job.id:<{width}}  {view.state:<9}  {wall:<12}  {_result_text(view)}{where}")


def check_command(job: Job) -> None:
    """The tool's own check of its command line (config, overrides, output folder), before anything runs; its one
    line, naming the job, when it fails."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            command_output_dir(job.spec.tool, job.argv)
    except SystemExit:
        lines = err.getvalue().strip().splitlines() or ["the tool refused its command line"]
        raise SuiteError(f"{job.id}: {lines[-1].removeprefix('error: ')}") from None


def run_local_jobs(jobs: List[Job], report) -> None:
    todo = [job for job in jobs if job_state(job, read_record(job)) != DONE]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} jobs already done; running {len(todo)} here, one after another")
    for index, job in enumerate(todo, 1):
        record = read_record(job)
        state = job_state(job, record)
        if state in (QUEUED, RUNNING) and record.get("slurm_job_id"):
            print(f"[{index}/{len(todo)}] {job.id}: {state} as Slurm job {record['slurm_job_id']}, not run here")
            continue
        if state == RUNNING:
            wait_for_earlier_process(job, record)
        print(f"[{index}/{len(todo)}] {job.id}: {shlex.join(job.display_command())}\n      log: {job.local_log}",
              flush=True)
        try:
            run_local(job)
        finally:
            report()
        view = collect([job], job_state)[0]
        print(f"      {view.state} in {format_duration(view.wall_s)}: {_result_text(view)}"
              if view.state == DONE else f"      {view.status()}", flush=True)


def run_slurm_jobs(jobs: List[Job], wait: bool, poll_s: float, report) -> None:
    submitted = 0
    for job in jobs:
        state = job_state(job, read_record(job))
        if state in (DONE, QUEUED, RUNNING):
            continue
        record = submit_slurm(job)
        submitted += 1
        print(f"{job.id}: submitted Slurm job {record['slurm_job_id']}; log {record['log']}", flush=True)
    print(f"{submitted} job(s) submitted")
    report()
    last = {}
    while wait:
        states = {job.id: job_state(job, read_record(job)) for job in jobs}
        for job_id, state in states.items():
            if last and state != last.get(job_id):
                print(f"{job_id}: {state}", flush=True)
        if states != last:
            report()
        last = states
        if not any(s in (QUEUED, RUNNING) for s in states.values()):
            break
        time.sleep(poll_s)


def run_suite(p: argparse.ArgumentParser, args, command: str, suite: Suite, encoders: List[Encoder],
              roots: Dict[str, str], out: Path, jobs: List[Job]) -> None:
    """Check every job's command, run the jobs, write the report."""
    runnable = [job for job in jobs if not job.skip_reason]
    try:
        for job in runnable:
            check_same_command(job, read_record(job))
        for encoder in encoders:
            check_encoder(encoder)
        for job in runnable:
            check_command(job)
    except InputError as exc:
        p.exit(2, f"error: {exc}\n")

    def report():
        return write_report(suite, encoders, collect(jobs, job_state), out, command, roots)

    skipped = len(jobs) - len(runnable)
    if skipped:
        print(f"{skipped} of {len(jobs)} jobs cannot run here (a data root not given, no recipe, several nodes): the "
              "report lists them with their commands")
    try:
        if args.launcher == "local":
            run_local_jobs(runnable, report)
        else:
            try:
                import submitit  # noqa: F401  (here, to say how to install it before anything is submitted)
            except ImportError:
                p.exit(2, "error: --launcher slurm needs submitit: pip install -e \".[slurm]\"\n")
            run_slurm_jobs(runnable, not args.no_wait, args.poll, report)
    except StopRequested as stop:
        print(f"stopped by {stop}: the running job checkpointed; run the same command to continue "
              f"(report so far: {out / 'report.html'})")
        p.exit(128 + stop.signum)
    except KeyboardInterrupt:  # between local jobs, or while following Slurm jobs (which go on)
        print(f"stopped; run the same command to continue (report so far: {out / 'report.html'})")
        p.exit(130)
    except InputError as exc:
        p.exit(1, f"error: {exc}\n")
    path = report()
    failed = [view for view in collect(runnable, job_state) if view.state == FAILED]
    print(f"report: {path} and {out / 'report.md'}")
    if failed:
        p.exit(1, f"error: {len(failed)} of {len(runnable)} jobs failed ("
                  + ", ".join(f"{v.job.id}: log {v.record.get('log')}" for v in failed) + "); the report marks them\n")


def main(p: argparse.ArgumentParser, args, command: str) -> None:
    try:
        suite = load_suite(args.suite)
        encoders = [parse_encoder(e) for e in args.encoder] or suite.encoders
        if not encoders:
            raise SuiteError(f"suite {suite.name} names no encoders: give at least one --encoder")
        check_encoders(encoders)
        roots = parse_data_roots(suite, args.data)
        out = Path(args.output_dir or f"output/report/{suite.name}")
        jobs = plan(suite.jobs, encoders, roots, out, args.launcher, slurm_settings(args.slurm), args.gpus)
        if args.status:
            print_status(collect(jobs, job_state), out)
            return
        check_writable_folder(out, "--output-dir")
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(out / ".report.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise SuiteError(f"{out}: another transfer_report.py is working in this folder") from None
    except InputError as exc:
        p.exit(2, f"error: {exc}\n")
    try:
        run_suite(p, args, command, suite, encoders, roots, out, jobs)
    finally:
        lock.release()
