"""torch.distributed set-up from the launcher's environment: torchrun's variables, or Slurm's for the tasks of an
srun step (single process when neither describes a group). Tasks never see which launcher started them."""
import atexit
import os
import re
import socket
import sys
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Iterator, List, Optional

import torch
import torch.distributed as dist

from . import slurm


def launcher() -> str:
    """'torchrun' (its variables, also a user's own RANK / WORLD_SIZE), 'slurm' (a task of an srun step) or
    'none'. torchrun wins: `srun ... torchrun ...` starts torchrun once per node, and its workers are the group."""
    if "WORLD_SIZE" in os.environ:
        return "torchrun"
    return "slurm" if slurm.in_step() else "none"


def export_launch_environment() -> str:
    """Under srun, set torchrun's variables from Slurm's (rank SLURM_PROCID, world SLURM_STEP_NUM_TASKS, local rank
    SLURM_LOCALID, the step's first host and a port derived from the job id), so that the env:// rendezvous and the
    device choice read one set of names. Returns the launcher."""
    name = launcher()
    if name == "slurm":
        os.environ.update(slurm.step_environment())
    return name


def init_distributed(device_type: str = "cpu", timeout_minutes: float = 30.0) -> None:
    """Join the process group that torchrun or an srun step describes; no-op for a single process.
    timeout_minutes (train.dist_timeout): how long joining, and later a collective, waits for the other processes
    before failing, instead of hanging on a process that died or never started."""
    if export_launch_environment() == "torchrun" and "TORCHELASTIC_RUN_ID" in os.environ:
        stop_with_launcher()
    if _alone:
        return
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_device_index())
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
        global _hosts
        _hosts = all_gather_object(socket.gethostname())
        if backend == "gloo":
            # left to the interpreter's exit, gloo's threads can outlive the group once the other processes are gone,
            # and a run that finished aborts ("terminate called without an active exception", SIGABRT)
            atexit.register(_close_gloo_group)


def stop_with_launcher() -> None:
    """Ask the kernel for SIGTERM when torchrun, this worker's parent, dies (Linux PR_SET_PDEATHSIG). torch starts
    its workers in sessions of their own, so a launcher killed with SIGKILL (by the OOM killer, by a user) would
    leave them training as orphans that hold the run's folder and devices; with the signal they checkpoint and stop
    as on a preemption, and the same command can resume at once."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _close_gloo_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def local_device_index() -> int:
    """This process's GPU: its local rank, modulo the GPUs it sees (a task bound to one GPU by `--gpus-per-task`
    sees only that one, as device 0)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return local_rank % count if count else local_rank


_alone = False
_hosts: List[str] = []  # every rank's host name, gathered when the group is joined: names a lost process's host


@contextmanager
def alone() -> Iterator[None]:
    """Within the block this process works as the only one (rank 0 of 1, no collectives): for work that one process
    does for all while the others wait at a barrier, such as pretraining the demo encoder."""
    global _alone
    _alone = True
    try:
        yield
    finally:
        _alone = False


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and not _alone


def get_rank() -> int:
    """The process's rank; before the group is joined, the rank its launcher gave it (so that output written before
    joining, such as a one-line error, comes from one process)."""
    if _alone:
        return 0
    if is_dist():
        return dist.get_rank()
    name = launcher()
    if name == "torchrun":
        return int(os.environ.get("RANK", "0"))
    return int(os.environ["SLURM_PROCID"]) if name == "slurm" else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's `obj`, in rank order (a one-element list when not distributed)."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any) -> Optional[List[Any]]:
    """Every rank's `obj` in rank order on the main process (None on the others), as detectron2 gathers evaluation
    results: only the main process holds them all."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size() if is_main_process() else None
    dist.gather_object(obj, out, dst=0)
    return out


def sync_batchnorm(model: torch.nn.Module, device: torch.device, setting: str) -> torch.nn.Module:
    """`model` with its BatchNorm layers synchronised across the processes of a multi-process GPU run (`setting`, the
    config key that asks for it, is named in the note). SyncBatchNorm needs CUDA: a CPU run keeps per-process
    BatchNorm and says so once."""
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if get_world_size() == 1 or not has_bn:
        return model
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if is_main_process():
        print(f"{setting}: SyncBatchNorm needs CUDA; this CPU run keeps per-process BatchNorm")
    return model


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (one small all-reduce; on the GPU under NCCL)."""
    if not is_dist():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


# gloo's transport names the peer whose connection broke by its address ("Connection closed by peer
# [169.254.77.2]:4230", "Read error [169.254.77.2]:4230: Connection reset by peer"); a peer that stops answering
# without closing its connections (a node cut off, a frozen process) is a timeout after train.dist_timeout.
_PEER = re.compile(r"\[([0-9A-Fa-f.:]+)\]:\d+")
_CAUSE = re.compile(r"connection (?:closed|reset|refused|timed out)(?: by peer)?|broken pipe|no route to host",
                    re.IGNORECASE)
_TIMEOUT = re.compile(r"Timed out waiting (\d+)ms")


def group_failure(exc: BaseException) -> Optional[str]:
    """What the process group lost, in words ("rank 1 on nodeB lost (connection reset by peer)"), when `exc` is the
    failure of a collective because another process died, left the network or stopped answering; None for any other
    error. torch raises gloo's failures as plain RuntimeErrors with the transport's message (hence the look at it),
    NCCL's as DistBackendError."""
    message = " ".join(str(exc).split())
    if not isinstance(exc, dist.DistError) and not (isinstance(exc, RuntimeError) and "gloo/transport/" in message):
        return None
    peer, cause, timeout = _PEER.search(message), _CAUSE.search(message), _TIMEOUT.search(message)
    if peer is not None:
        ranks, host = _ranks_at(peer.group(1))
        who = (f"rank {ranks[0]} on {host}" if len(ranks) == 1 else
               f"{host} (ranks {_rank_ranges(ranks)})" if ranks else host)
        return f"{who} lost ({cause.group(0).lower() if cause else 'connection broken'})"
    if timeout is not None:
        return f"no answer from another process for {int(timeout.group(1)) / 1000:g} s (train.dist_timeout)"
    return f"the process group failed ({message[:200]})"


def _ranks_at(address: str):
    """The other ranks whose host resolves to `address`, and that host's name (else the address's own name)."""
    def addresses(host: str) -> set:
        try:
            return {info[4][0] for info in socket.getaddrinfo(host, None)}
        except OSError:
            return set()

    ranks = [r for r, host in enumerate(_hosts) if r != get_rank() and address in addresses(host)]
    if ranks:
        return ranks, _hosts[ranks[0]]
    try:
        return [], f"{socket.gethostbyaddr(address)[0]} ({address})"
    except OSError:
        return [], address


def _rank_ranges(ranks: List[int]) -> str:
    """"1,3,8-15" for [1, 3, 8, ..., 15]."""
    parts: List[str] = []
    for rank in ranks:
        if parts and rank == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{rank}"
        else:
            parts.append(str(rank))
    return ",".join(parts)
