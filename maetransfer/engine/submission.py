"""A tool's command line submitted as one Slurm job through submitit (the optional `slurm` extra), as the official MAE
repository submits its runs: one task per GPU, the tasks joining one process group from Slurm's environment.

submitit sends USR2 `signal_delay_s` before the time limit. While a run trains, the engine handles it (checkpoint at
the next iteration, then requeue); before training starts, submitit's own handler requeues through
`ToolJob.checkpoint`. Either way the requeued job runs the same command, which resumes the run in its output folder.
"""
import os
import runpy
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import InputError


class SubmissionError(InputError):
    """A job that cannot be submitted from here."""


@dataclass
class ToolJob:
    """What the job runs: `python tool argv...` in the folder it was submitted from, in the job's own process (so
    that the engine, not a wrapper, receives Slurm's signals)."""
    tool: str
    argv: List[str]
    cwd: str

    def __call__(self) -> None:
        os.chdir(self.cwd)
        sys.argv = [self.tool, *self.argv]
        runpy.run_path(self.tool, run_name="__main__")

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on its time-limit signal: requeue the same command (it resumes from the checkpoint)."""
        import submitit
        return submitit.helpers.DelayedSubmission(self)


@dataclass
class JobResources:
    """What the job asks Slurm for. tasks_per_node: one per GPU (gpus_per_node), or as given on CPU nodes."""
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    mem_gb: Optional[float] = None
    time_min: int = 60
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    comment: Optional[str] = None
    job_name: str = "maetransfer"
    signal_delay_s: int = 120
    sbatch: Dict[str, str] = field(default_factory=dict)  # any other sbatch option, without its leading --

    def executor_parameters(self) -> Dict:
        """submitit.SlurmExecutor.update_parameters(**...) for these resources."""
        optional = {"cpus_per_task": self.cpus_per_task, "partition": self.partition, "account": self.account,
                    "qos": self.qos, "constraint": self.constraint, "comment": self.comment,
                    "mem": None if self.mem_gb is None else f"{int(self.mem_gb * 1024)}MB",
                    "gpus_per_node": self.gpus_per_node or None}
        return {"nodes": self.nodes, "ntasks_per_node": self.tasks_per_node or max(self.gpus_per_node, 1),
                "time": self.time_min, "job_name": self.job_name, "signal_delay_s": self.signal_delay_s,
                # requeueable even where the cluster's JobRequeue default says otherwise
                "additional_parameters": {"requeue": True, **self.sbatch},
                **{k: v for k, v in optional.items() if v is not None}}


def slurm_executor(log_dir: Path, resources: JobResources, dry_run: bool = False):
    """A submitit executor that writes the job's script, pickled call and per-task logs into `log_dir`. Submitting
    needs Slurm's srun on PATH (SubmissionError, one line, without it); a `dry_run` executor only shows its script,
    which needs no Slurm at all."""
    import submitit

    class DryRunExecutor(submitit.SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:  # submitit refuses to build an executor where it finds no srun
            return 1

    if not dry_run and shutil.which("srun") is None:
        raise SubmissionError("Slurm's srun is not on PATH: submit from a node of the cluster (--dry-run prints the "
                              "batch script anywhere)")
    executor = (DryRunExecutor if dry_run else submitit.SlurmExecutor)(folder=str(log_dir), python=sys.executable)
    executor.update_parameters(**resources.executor_parameters())
    return executor


def sbatch_script(executor) -> str:
    """The batch script that `executor.submit` would hand to sbatch (for --dry-run). submitit has no public call for
    it; `_make_submission_file_text` is the method its own submission uses (submitit is pinned below 2)."""
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def task_log(log_dir: Path, job_id: str, task: int = 0) -> Path:
    """The log of one task of a submitit job (rank 0's by default): where the run's progress shows."""
    return Path(log_dir) / f"{job_id}_{task}_log.out"
