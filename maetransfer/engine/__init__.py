from . import dist
from .trainer import (CHECKPOINT_NAME, EpochSampler, Trainer, atomic_save, evaluate_checkpoint, resolve_device,
                      seed_everything, setup_process)
