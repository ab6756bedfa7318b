"""One evaluator protocol for every task, and one loop that runs a model over a data set for any evaluator.

An evaluator (in the spirit of detectron2's DatasetEvaluator) knows its data set and how to run the model on one of
its batches, and accumulates what it needs from each batch: `reset`, then `forward` + `process` on every batch this
process evaluates, then `local_results` from every process are gathered to the main process, which `merge`s them and
`evaluate`s. `inference_on_dataset` owns everything around that, the same way for every task: which images (the
first `max_images` of the split, dealt round-robin to the processes), eval mode and no_grad, autocast (the config's
`eval.amp` on any device, as `train.amp`), the progress bar, and the gather.

The results live on the main process: `inference_on_dataset` returns the evaluator's results there and {} on the
other processes, as detectron2's `inference_on_dataset` does.
"""
import itertools
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from . import dist
from .amp import autocast
from .preemption import ShieldedDataLoader


class DatasetEvaluator:
    """What a task's evaluation brings to `inference_on_dataset`. Subclasses set `dataset` (and `batch_size`,
    `collate_fn` when they batch otherwise) and implement the five steps."""

    dataset: Dataset
    batch_size: int = 1
    collate_fn: Optional[Callable] = None

    def reset(self) -> None:
        """Forget what an earlier evaluation processed."""

    def forward(self, model: nn.Module, inputs: Any, device: torch.device) -> Any:
        """The model's outputs for one batch as the loader gives it (the task's inference: test-time resizing,
        sliding windows, mapping back to each image's size)."""
        raise NotImplementedError

    def process(self, inputs: Any, outputs: Any) -> None:
        """Accumulate what evaluation needs from one batch and its outputs."""
        raise NotImplementedError

    def local_results(self) -> Any:
        """What this process accumulated, picklable (on the CPU), for the gather to the main process."""
        raise NotImplementedError

    def merge(self, parts: List[Any]) -> None:
        """Main process: take every process's `local_results`, in rank order, as the whole evaluation's."""
        raise NotImplementedError

    def evaluate(self) -> Dict:
        """Main process, after `merge`: the metrics (and whatever files the task writes)."""
        raise NotImplementedError


def evaluated_indices(size: int, max_images: int = 0) -> List[int]:
    """This process's share of a split of `size` images: the first `max_images` (all when <= 0), dealt round-robin,
    so that the evaluated images are the same on any number of processes and none is counted twice."""
    count = size if max_images <= 0 else min(int(max_images), size)
    return list(range(dist.get_rank(), count, dist.get_world_size()))


def model_device(model: nn.Module) -> torch.device:
    """The device a model computes on: its parameters' or buffers' (an exported model has none and names its
    own)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else model.device


def inference_on_dataset(model: nn.Module, evaluator: DatasetEvaluator, max_images: int = 0, num_workers: int = 0,
                         amp: str = "none") -> Dict:
    """Run `model` over the first `max_images` images of `evaluator.dataset` (all when 0) on every process, gather
    to the main process and evaluate there; returns the results on the main process and {} on the others. The model
    is in eval mode, without gradients and under `amp` autocast while it runs, and in its earlier mode afterwards."""
    device = model_device(model)
    indices = evaluated_indices(len(evaluator.dataset), max_images)
    loader = ShieldedDataLoader(Subset(evaluator.dataset, indices), batch_size=evaluator.batch_size,
                                num_workers=num_workers, collate_fn=evaluator.collate_fn,
                                pin_memory=device.type == "cuda")
    evaluator.reset()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(device.type, amp):
            for inputs in tqdm(loader, desc="evaluate", disable=not dist.is_main_process(), dynamic_ncols=True):
                evaluator.process(inputs, evaluator.forward(model, inputs, device))
    finally:
        model.train(was_training)
    parts = dist.gather_object(evaluator.local_results())
    if not dist.is_main_process():
        return {}
    evaluator.merge(parts)
    return evaluator.evaluate()
