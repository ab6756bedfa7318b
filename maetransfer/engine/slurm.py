"""What a process learns from Slurm's environment: whether srun started it as one task of a step (and then its rank,
the step's size and the address where the step's tasks meet), whether its job was requeued, and how to requeue it.

Only an srun step describes a process group: the batch script of an sbatch job (and a shell under salloc) also sees
SLURM_PROCID=0 and SLURM_NTASKS, but it is a single process, so the step's own variables (SLURM_STEP_ID,
SLURM_STEP_NUM_TASKS) are what tell the two apart.
"""
import os
import re
import shutil
import subprocess
from typing import List, Mapping, Optional

# Bracketed host ranges: "gpu[01-04,07]" -> gpu01 ... gpu04, gpu07 (zero padding kept); several brackets multiply.
_BRACKET = re.compile(r"\[([^\]]*)\]")


def expand_hostlist(hostlist: str) -> List[str]:
    """The host names of a Slurm host list ("gpu[01-04,07],login1", "rack[1-2]-n[01-02]"), in Slurm's order, as
    `scontrol show hostnames` prints them. Written here because no maintained library parses Slurm host lists, and
    compute nodes without Slurm's client tools must still find the first host."""
    hosts: List[str] = []
    depth, start = 0, 0
    for i, char in enumerate(hostlist + ","):  # split at the commas outside brackets
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            if hostlist[start:i].strip():
                hosts += _expand_one(hostlist[start:i].strip())
            start = i + 1
    return hosts


def _expand_one(pattern: str) -> List[str]:
    match = _BRACKET.search(pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[:match.start()], pattern[match.end():]
    names = []
    for part in match.group(1).split(","):
        low, _, high = part.partition("-")
        if not high:
            names.append(low)
            continue
        width = len(low)
        names += [str(n).zfill(width) for n in range(int(low), int(high) + 1)]
    return [head + name + rest for name in names for rest in _expand_one(tail)]


def first_host(hostlist: str) -> str:
    """The first host of a node list: `scontrol show hostnames` where Slurm's client is installed, else our parser."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    return expand_hostlist(hostlist)[0]


def in_step(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a task of an srun step (not a batch script or an salloc shell)."""
    return "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ


def step_port(environ: Mapping[str, str] = os.environ) -> int:
    """The rendezvous port of a step, derived from its job and step ids, so that two jobs (or two steps of one job)
    sharing a node do not meet on one port: 12000-31999, below Linux's ephemeral ports (32768 and up)."""
    job, step = int(environ.get("SLURM_JOB_ID", "0")), int(environ.get("SLURM_STEP_ID", "0"))
    return 12000 + (job % 5000) * 4 + step % 4


def step_environment(environ: Mapping[str, str] = os.environ) -> Optional[dict]:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for a task of an srun step, or
    None outside a step. MASTER_ADDR / MASTER_PORT set by the user are kept."""
    if not in_step(environ):
        return None
    world = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1"
    nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": world, "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": environ.get("MASTER_ADDR") or (first_host(nodes) if nodes else "127.0.0.1"),
            "MASTER_PORT": environ.get("MASTER_PORT") or str(step_port(environ))}


def job_id(environ: Mapping[str, str] = os.environ) -> Optional[str]:
    return environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")


def requeued(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this job runs again after a requeue (preemption, time-limit requeue, `scontrol requeue`)."""
    return int(environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


class RequeueError(RuntimeError):
    pass


def requeue_job(job: str) -> None:
    """`scontrol requeue JOB`: Slurm stops the job's processes and queues it again under the same id; the batch script
    then runs anew (the tools resume the run in their output folder)."""
    try:
        subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=True)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        raise RequeueError(f"scontrol requeue {job} failed: {' '.join(detail.split())}") from None
