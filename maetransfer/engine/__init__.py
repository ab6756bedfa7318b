from . import dist, slurm
from .preemption import RunStopped, ShieldedDataLoader
from .checkpointing import CHECKPOINT_NAME, TrainingError, atomic_save, remove_stale_temporaries
from .trainer import EpochSampler, Trainer, evaluate_checkpoint, resolve_device, seed_everything, setup_process
