from ..files import remove_stale_temporaries
from . import dist, slurm
from .checkpointing import CHECKPOINT_NAME, TrainingError, atomic_save
from .hooks import Hook
from .preemption import RunStopped, ShieldedDataLoader
from .runner import Task, evaluate_checkpoint, model_device, run_task
from .trainer import EpochSampler, Trainer, resolve_device, seed_everything, setup_process
