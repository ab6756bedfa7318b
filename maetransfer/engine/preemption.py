"""Signals that end a training job early, turned into a stop at the next iteration boundary.

Slurm warns a job before its time limit with the signal of `--signal=[B:]SIG@SECONDS` (USR1 by convention, USR2 under
submitit) and ends a preempted or requeued job (`scontrol requeue`, PreemptMode=REQUEUE) with SIGTERM, then SIGKILL
after KillWait (30 s by default); torchrun passes SIGTERM on to its workers. The handlers only record the signal: the
engine's loop asks every process whether any got one after each optimizer update, so all of them stop at the same
update, write the checkpoint and exit. A time-limit warning also requeues the job (Slurm requeues a preempted one by
itself, and must not bring back one that was cancelled); the requeued job resumes from the checkpoint. A signal that
arrives during a checkpoint write or an evaluation waits for it to finish, so the previous checkpoint is never lost.
"""
import atexit
import signal
import threading
import weakref
from typing import Dict, Iterator, Optional

from torch.utils.data import DataLoader

# Codes agreed on across processes (the largest wins): a time-limit warning asks for a requeue as well as a stop.
NO_STOP, STOP, STOP_AND_REQUEUE = 0, 1, 2
HANDLED = {signal.SIGTERM: STOP, signal.SIGUSR1: STOP_AND_REQUEUE, signal.SIGUSR2: STOP_AND_REQUEUE}


class StopRequests:
    """Records the stop signals received while installed (`with StopRequests() as stop:`); `stop.code` is the
    strongest request so far (NO_STOP, STOP or STOP_AND_REQUEUE) and `stop.signal_name` the signal that made it.
    Installed in the main thread only (Python delivers signals there); elsewhere it records nothing."""

    def __init__(self):
        self.code, self.signal_name = NO_STOP, ""
        self._previous: Dict[int, object] = {}

    def _record(self, signum: int, frame) -> None:
        if HANDLED[signum] > self.code:
            self.code, self.signal_name = HANDLED[signum], signal.Signals(signum).name

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._record) for signum in HANDLED}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class ShieldedDataLoader(DataLoader):
    """A DataLoader whose worker processes never see the stop signals. Slurm signals every process of a job step, and
    a worker dies of SIGTERM (torch's worker handler re-raises it) or of USR1 / USR2 (their default action), which
    would turn a clean stop into a crash of the run. The workers are started with these signals blocked (a child
    inherits the mask, whatever the start method); the main process unblocks them right after, so it still receives
    them. Every loader that runs while a run trains (training and evaluation) is one of these."""

    def __iter__(self) -> Iterator:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, tuple(HANDLED))
        try:
            iterator = super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        _shielded_workers.update(getattr(iterator, "_workers", ()))  # torch keeps them there (none without workers)
        return iterator


_shielded_workers: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register  # after multiprocessing's own exit hook (imported with torch), so it runs before it
def _kill_shielded_workers() -> None:
    """At exit, multiprocessing ends the daemonic children still alive (the workers of a loader whose iterator an
    exception kept) with SIGTERM and waits for them: shielded workers block SIGTERM, so they are killed instead
    (without torch's SIGCHLD handler, which would report a worker killed while the program ends)."""
    workers = [worker for worker in _shielded_workers if worker.is_alive()]
    if workers and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in workers:
        worker.kill()


class RunStopped(Exception):
    """A run that stopped on a signal after writing its checkpoint; requeue_job: the Slurm job to requeue, if any.
    exit_code: 128 + the signal's number, as a shell reports a process ended by that signal."""

    def __init__(self, message: str, signal_name: str, checkpoint: str, requeue_job: Optional[str] = None):
        super().__init__(message)
        self.signal_name, self.checkpoint, self.requeue_job = signal_name, checkpoint, requeue_job
        self.exit_code = 128 + int(getattr(signal, signal_name))
