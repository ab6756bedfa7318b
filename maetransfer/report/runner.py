"""The jobs of a report: each suite row paired with each encoder, run as the tool's own command line, locally one after
another or as Slurm jobs through submitit, and what each one's record says about it.

Layout of the report folder:

    DIR/runs/<encoder>/<job>/        the tool's output folder (config.yaml, log.jsonl, metrics.json, checkpoint.pth)
    DIR/runs/<encoder>/<job>.json    the job's record: command, state, exit code, start/end and machine of each part
    DIR/runs/<encoder>/<job>.log     the tool's output (local runs; Slurm jobs write to <job>/slurm/)

Every command carries `--resume auto`, so a job that was stopped (a signal, a killed report, a requeue) continues
from its checkpoint when the report runs again, and a finished job (record: exit 0) is read, not rerun.
"""
import ctypes
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..engine.submission import JobResources, ToolJob, slurm_executor, task_log
from ..files import write_text
from .suite import Encoder, JobSpec, SuiteError

DONE, FAILED, STOPPED, RUNNING, QUEUED, PENDING = "done", "failed", "stopped", "running", "queued", "pending"
SKIPPED, NO_RECIPE = "skipped", "no recipe"
_PR_SET_PDEATHSIG = 1  # prctl option, linux/prctl.h
# squeue states of a job that will still run (or is running)
_SLURM_ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"}


@dataclass
class Job:
    """One suite row for one encoder, and how it is launched: `local` (python, or torchrun for the GPUs of one node)
    or `slurm`, with `resources` (JobResources fields: the suite's and the command line's settings)."""
    spec: JobSpec
    encoder: Encoder
    output_dir: Path
    launcher: str = "local"
    resources: Dict = field(default_factory=dict)
    skip_reason: str = ""  # why it cannot run here (a data root not given, no recipe); '' when it can
    data_root: Optional[str] = None

    @property
    def id(self) -> str:
        return f"{self.encoder.label}/{self.spec.name}"

    @property
    def tool_path(self) -> str:
        return f"tools/{self.spec.tool}.py"

    @property
    def argv(self) -> List[str]:
        """The tool's arguments: config, output folder, resume, the suite's overrides, data root and encoder (the data
        root's name in brackets while it is not given)."""
        data = [f"data.root={self.data_root or f'<data.{self.spec.data}>'}"] if self.spec.data else []
        return ["--config", self.spec.config, "--output-dir", str(self.output_dir), "--resume", "auto",
                *self.spec.overrides, *data, f"train.init_checkpoint={self.encoder.spec}"]

    @property
    def processes(self) -> int:
        """Processes on each node: one per GPU (or as many tasks as the suite asks for)."""
        return int(self.resources.get("tasks_per_node") or self.resources.get("gpus_per_node") or 1)

    def command(self, python: str = sys.executable, unbuffered: bool = True) -> List[str]:
        """The local command line: python for one process, torchrun for one node's processes; unbuffered, so that
        the job's log follows its progress."""
        flags = ["-u"] if unbuffered else []
        if self.processes == 1:
            return [python, *flags, self.tool_path, *self.argv]
        return [python, *flags, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.processes}",
                self.tool_path, *self.argv]

    def display_command(self) -> List[str]:
        """The command that runs this job alone, as a person types it: the local one, or for Slurm the same job
        submitted through tools/submit.py (also for a job of several nodes, which runs nowhere else)."""
        if self.launcher == "local" and int(self.resources.get("nodes") or 1) == 1:
            return self.command("python", unbuffered=False)
        options = []
        for key, value in self.resources.items():
            if value in (None, "", 0) or key == "sbatch":
                continue
            name = {"time_min": "time", "signal_delay_s": "signal-delay"}.get(key, key.replace("_", "-"))
            options += [f"--{name}", str(value)]
        for key, value in (self.resources.get("sbatch") or {}).items():
            options += ["--sbatch", f"{key}={value}"]
        return ["python", "tools/submit.py", *options, self.tool_path, *self.argv]

    @property
    def record_path(self) -> Path:
        return self.output_dir.with_name(self.output_dir.name + ".json")

    @property
    def local_log(self) -> Path:
        return self.output_dir.with_name(self.output_dir.name + ".log")

    @property
    def slurm_dir(self) -> Path:
        return self.output_dir / "slurm"

    @property
    def static_state(self) -> Optional[str]:
        if not self.skip_reason:
            return None
        return NO_RECIPE if not self.spec.recipe_exists else SKIPPED


def local_gpu_count() -> int:
    """The GPUs this machine's jobs can use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan(specs: List[JobSpec], encoders: List[Encoder], data_roots: Dict[str, str], output: Path,
         launcher: str = "local", settings: Optional[Dict] = None, local_gpus: Optional[int] = None) -> List[Job]:
    """Every row for every encoder, in suite order (all encoders of a row together, so that a partial report already
    compares them). A row of several nodes cannot run under the local launcher: it is listed as skipped.
    The suite's GPUs per node are what a Slurm job asks for; a local job runs one process per GPU of this machine
    (`local_gpus`, by default all it has; one process without a GPU)."""
    if launcher == "local":
        gpus = local_gpu_count() if local_gpus is None else local_gpus
        settings = {**(settings or {}), "gpus_per_node": gpus, "tasks_per_node": None}
    jobs = []
    for spec in specs:
        for encoder in encoders:
            job = Job(spec, encoder, Path(output) / "runs" / encoder.label / spec.name, launcher,
                      {**spec.resources, **(settings or {})})
            nodes = int(job.resources.get("nodes") or 1)
            if not spec.recipe_exists:
                job.skip_reason = f"no recipe: {spec.config} does not exist"
            elif spec.data and spec.data not in data_roots:
                job.skip_reason = f"data.{spec.data} not given"
            elif launcher == "local" and nodes > 1:
                job.skip_reason = f"needs {nodes} nodes: run with --launcher slurm"
            elif spec.data:
                job.data_root = data_roots[spec.data]
            jobs.append(job)
    return jobs


# ---------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------
def machine() -> Dict:
    """Where a part of a job ran: host, CPU, cores, GPUs, Python and the Slurm job when there is one."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name")) or cpu
    except (OSError, StopIteration):
        pass
    try:
        gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        gpus = []
    info = {"host": socket.gethostname(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "gpus": [g.split(" (UUID")[0] for g in gpus if g.startswith("GPU")], "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "")}
    if os.environ.get("SLURM_JOB_ID"):
        info.update(slurm_job_id=os.environ["SLURM_JOB_ID"], slurm_nodes=os.environ.get("SLURM_JOB_NODELIST", ""),
                    slurm_tasks=os.environ.get("SLURM_NTASKS", ""))
    return info


def read_record(job: Job) -> Dict:
    try:
        return json.loads(job.record_path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SuiteError(f"{job.record_path}: unreadable job record ({exc}); delete it to run the job again") from None


def write_record(path: Path, record: Dict) -> None:
    write_text(path, json.dumps(record, indent=1) + "\n")


def wall_seconds(record: Dict) -> float:
    """The job's time: the sum of its parts (a resumed job ran in several)."""
    return sum(part["end"] - part["start"] for part in record.get("parts", []) if part.get("end"))


def check_same_command(job: Job, record: Dict) -> None:
    """A report folder's job is only continued by the same command: other overrides or another encoder spec in the
    same folder would mix two runs."""
    if not record or (record.get("tool"), record.get("argv")) == (job.tool_path, job.argv):
        return
    old, new = [record.get("tool", ""), *record.get("argv", [])], [job.tool_path, *job.argv]
    ran, asked = [t for t in old if t not in new], [t for t in new if t not in old]
    ran_with = shlex.join(ran) or "the same arguments in another order"
    raise SuiteError(f"{job.output_dir} holds a run of another command (it ran with {ran_with}; this command gives "
                     f"{shlex.join(asked) or 'none of them'}): choose another --output-dir, or delete that folder and "
                     f"{job.record_path.name}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # kill(0) would ask about this process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def slurm_alive_state(job_id: str) -> Optional[str]:
    """squeue's state of a Slurm job that is still pending or running, else None."""
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"], capture_output=True,
                             text=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[0] if out and out[0] in _SLURM_ALIVE else None


def job_state(job: Job, record: Dict) -> str:
    """Where a job is: skipped / no recipe / pending / queued / running / done / failed / stopped. A record that
    says running whose process (or Slurm job) is gone was stopped from outside."""
    static = job.static_state
    if static:
        return static
    state = record.get("state")
    if not state:
        return PENDING
    if record.get("slurm_job_id"):
        alive = slurm_alive_state(record["slurm_job_id"])
        if alive:
            return RUNNING if alive in ("RUNNING", "COMPLETING") else QUEUED
    elif state == RUNNING and record.get("host") == socket.gethostname() and _pid_alive(int(record.get("pid", 0))):
        return RUNNING
    return STOPPED if state in (RUNNING, QUEUED) else state


def outcome(code: int) -> str:
    """The state a tool's exit code means: 0 done; a stop signal (128 + signal, or killed by one) stopped, which the
    next report run resumes; anything else failed."""
    if code == 0:
        return DONE
    return STOPPED if code < 0 or code > 128 else FAILED


def last_error_line(log: Path) -> str:
    """The line a failed tool ended with: its 'error: ...' line, else the last line of its output."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").replace("\r", "\n").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1]


# ---------------------------------------------------------------------------------------------------------------
# Local runs
# ---------------------------------------------------------------------------------------------------------------
class StopRequested(Exception):
    """The report was asked to stop (SIGINT / SIGTERM): the running job has checkpointed and stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _begin_part(job: Job, record: Dict, launcher: str) -> Dict:
    part = {"start": time.time(), "end": None, "machine": machine()}
    record.update(tool=job.tool_path, argv=job.argv, cwd=os.getcwd(), launcher=launcher,
                  parts=[*record.get("parts", []), part])
    return part


def _stop_with_parent() -> None:
    """In the child, before exec: SIGTERM when the report dies, however it dies, so that a killed report leaves no
    training running on (the tool checkpoints and stops, and the next report run resumes it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_for_earlier_process(job: Job, record: Dict, poll_s: float = 1.0) -> None:
    """A job that a killed report started may still be writing its checkpoint: wait until its process is gone."""
    pid = int(record.get("pid") or 0)
    if pid and record.get("host") == socket.gethostname() and _pid_alive(pid):
        print(f"      waiting for process {pid}, which an earlier report started for this job, to stop", flush=True)
        while _pid_alive(pid):
            time.sleep(poll_s)


def run_local(job: Job, on_start: Callable[[Job], None] = lambda job: None) -> Dict:
    """Run the job's command in a session of its own (the terminal's Ctrl-C reaches only the report), output appended
    to its log. SIGINT or SIGTERM to the report is passed on to the tool as SIGTERM (checkpoint at the next iteration,
    then exit); the job is then recorded as stopped and StopRequested raised."""
    record = read_record(job)
    part = _begin_part(job, record, "local")
    job.output_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(job.local_log, "ab") as log:
        log.write(f"$ {shlex.join(job.display_command())}\n".encode())
        log.flush()
        process = subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_stop_with_parent if sys.platform == "linux" else None)
    record.update(state=RUNNING, pid=process.pid, host=socket.gethostname(), log=str(job.local_log),
                  exit_code=None, error="")
    record.pop("slurm_job_id", None)  # a job that an earlier report ran under Slurm continues here
    write_record(job.record_path, record)
    on_start(job)
    stop = []

    def forward(signum, frame):
        stop.append(signum)
        process.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = process.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    part["end"] = time.time()
    state = outcome(code) if not (stop and code != 0) else STOPPED
    record.update(state=state, exit_code=code, error="" if state == DONE else last_error_line(job.local_log))
    write_record(job.record_path, record)
    if stop:
        raise StopRequested(stop[0])
    return record


# ---------------------------------------------------------------------------------------------------------------
# Slurm
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RecordedToolJob(ToolJob):
    """The tool run as submitit's callable (in the job's own process, so the engine receives Slurm's signals), its
    record updated by the first task: each part's start, end and machine, and the exit code. A requeued job (submitit's
    checkpoint hook, or the engine's own requeue) runs this again and adds a part."""
    record: str = ""

    def _update(self, change: Callable[[Dict], None]) -> None:
        path = Path(self.cwd) / self.record
        record = json.loads(path.read_text()) if path.is_file() else {}
        change(record)
        write_record(path, record)

    def __call__(self) -> None:
        if os.environ.get("SLURM_PROCID", "0") != "0":
            super().__call__()
            return
        start = time.time()
        part = {"start": start, "end": None, "machine": machine()}
        self._update(lambda r: r.update(state=RUNNING, host=socket.gethostname(), parts=[*r.get("parts", []), part]))
        code = 1
        try:
            super().__call__()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()

            def finish(record: Dict) -> None:
                for p in record.get("parts", []):
                    if p["start"] == start:
                        p["end"] = time.time()
                state, log = outcome(code), record.get("log")
                error = last_error_line(Path(self.cwd) / log) if log and state != DONE else ""
                record.update(state=state, exit_code=code, error=error)
            self._update(finish)


def submit_slurm(job: Job) -> Dict:
    """Submit the job through submitit with its resources; record it as queued."""
    resources = JobResources(**{**job.resources, "job_name": f"{job.encoder.label}-{job.spec.name}"})
    executor = slurm_executor(job.slurm_dir, resources)
    record = read_record(job)
    record.update(tool=job.tool_path, argv=job.argv, cwd=os.getcwd(), launcher="slurm",
                  parts=record.get("parts", []), state=QUEUED, exit_code=None, error="")
    for stale in ("pid", "slurm_job_id"):
        record.pop(stale, None)
    write_record(job.record_path, record)  # the callable reads it on the node
    submitted = executor.submit(RecordedToolJob(str(Path(job.tool_path).resolve()), job.argv, os.getcwd(),
                                                record=str(job.record_path)))
    record = read_record(job)  # read again: the job may have started meanwhile and recorded so
    record.update(slurm_job_id=str(submitted.job_id), log=str(task_log(job.slurm_dir, submitted.job_id)))
    if record.get("state") != RUNNING:
        record["state"] = QUEUED
    write_record(job.record_path, record)
    return record
