"""torch.distributed set-up from torchrun's environment (single process when it is absent)."""
import os
from datetime import timedelta
from typing import Any, List

import torch
import torch.distributed as dist


def init_distributed(device_type: str = "cpu", timeout_minutes: float = 30.0) -> None:
    """Join the process group that torchrun describes (RANK / WORLD_SIZE / MASTER_ADDR); no-op otherwise.
    timeout_minutes (train.dist_timeout): how long joining, and later a collective, waits for the other processes
    before failing, instead of hanging on a process that died or never started."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


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


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
