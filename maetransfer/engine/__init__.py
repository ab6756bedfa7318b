from ..files import remove_stale_temporaries
from . import dist, slurm
from .checkpointing import BEST_NAME, CHECKPOINT_NAME, Checkpointer, TrainingError
from .evaluation import DatasetEvaluator, evaluated_indices, inference_on_dataset, model_device
from .hooks import Hook, build_hooks, default_hooks
from .preemption import RunStopped, ShieldedDataLoader
from .runner import Task, evaluate_checkpoint, run_task
from .trainer import EpochSampler, Trainer, resolve_device, seed_everything, setup_process
