from . import dist, slurm
from .preemption import RunStopped, ShieldedDataLoader
from .trainer import (CHECKPOINT_NAME, EpochSampler, Trainer, TrainingError, atomic_save, evaluate_checkpoint,
                      remove_stale_temporaries, resolve_device, seed_everything, setup_process)
