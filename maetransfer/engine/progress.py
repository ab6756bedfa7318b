"""What a job tells its user about where it is: the stages it will run, announced as "[2/3] training: ...", and how
long it took. The progress bars with counts and time estimates are the trainer's and the evaluators' (tqdm)."""
from contextlib import contextmanager
from typing import Iterator, List, Sequence

from . import dist

# Stage keys and how they are announced.
STAGE_TITLES = {"pretrain": "MAE pretraining", "train": "training", "evaluate": "evaluation"}

_planned: List[str] = []


@contextmanager
def planned_stages(stages: Sequence[str]) -> Iterator[None]:
    """Within the block, announcements of these stages (keys of STAGE_TITLES, in the order the job runs them) are
    numbered "[k/n]"; the plan is dropped afterwards so that it cannot number the stages of a later job."""
    _planned[:] = list(stages)
    try:
        yield
    finally:
        _planned.clear()


def begin_stage(stage: str, detail: str) -> None:
    """Print, on the main process, "[k/n] <title>: <detail>" (no number when the stage is not in the plan)."""
    if not dist.is_main_process():
        return
    number = f"[{_planned.index(stage) + 1}/{len(_planned)}] " if stage in _planned else ""
    print(f"{number}{STAGE_TITLES[stage]}: {detail}", flush=True)


def format_duration(seconds: float) -> str:
    """'4 min 53 s', '38 s', '1 h 02 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"

