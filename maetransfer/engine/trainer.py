"""The training loop shared by pretraining, classification, detection and segmentation.

One optimizer update is one "iteration": the lr schedule, logging, checkpoint and eval periods count updates.
Resuming is exact, also mid-epoch and with any num_workers: the sample order of an epoch depends only on (seed,
epoch), each sample's augmentation is seeded from (seed, epoch, index) (`SeededSamples`), every epoch reseeds the
training process's RNGs from (seed, epoch, rank), and a checkpoint also stores every process's RNG states and the
position inside the epoch (`checkpointing.Checkpointer`: what a checkpoint holds, its atomic writes, history and
pointer, and the checks of a resume file). Around the loop, everything else is a hook (`hooks`); a hook may end the
run early (`request_stop`).

A stop signal (preemption's SIGTERM, Slurm's time-limit warning USR1 / USR2) ends a run at the next update, the same
one on every process, with its checkpoint written; a time-limit warning also requeues the Slurm job (`preemption`).

Bad input is found before anything is written into the output dir: a training set too small for one update, a
`train.resume` file that is missing, corrupt, unsafe to unpickle or of another model raise `TrainingError` (one
line naming the file); so does a non-finite loss, naming the checkpoint that really exists, and a collective that
fails because another process or node is gone (`dist.group_failure` names it).
"""
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler

from ..config import ConfigError, save_config
from ..files import remove_stale_temporaries
from ..optim import base_lr, build_optimizer, lr_at
from . import amp, dist, progress, slurm
from .checkpointing import Checkpointer, RunFolderLock, TrainingError, set_rng_state
from .hooks import Hook, WeightAverage, default_hooks
from .preemption import NO_STOP, STOP_AND_REQUEUE, RunStopped, ShieldedDataLoader, StopRequests


class EpochSampler(Sampler):
    """Shards a seeded per-epoch permutation across ranks (as DistributedSampler) and can start mid-epoch."""

    def __init__(self, size: int, shuffle: bool, seed: int, rank: int, world_size: int):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        order += order[: self.per_rank * self.world_size - self.size]  # pad so every rank gets as many
        return iter(order[self.rank::self.world_size][self.start:])

    def __len__(self) -> int:
        return self.per_rank - self.start


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        dist.export_launch_environment()  # LOCAL_RANK under srun
        return torch.device("cuda", dist.local_device_index())
    return torch.device(name)


def setup_process(train_cfg: DictConfig) -> torch.device:
    """What every run does first: torch's CPU thread count (`num_threads`, 0 = torch's default), the random seed (so
    that the same seed builds the same initial weights: new heads, random-init baselines), the device, and the
    process group when started by torchrun or srun (waiting `dist_timeout` minutes for the others). Returns the
    device. num_threads 0 under srun means the task's CPUs (--cpus-per-task, else Slurm's 1) unless OMP_NUM_THREADS
    is set, as torchrun sets 1 thread a process: a task does not oversubscribe its CPUs, and equals torchrun."""
    threads = int(train_cfg.num_threads)
    if not threads and dist.launcher() == "slurm" and "OMP_NUM_THREADS" not in os.environ:
        threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    if threads:
        torch.set_num_threads(threads)
    if train_cfg.dist_timeout <= 0:
        raise ConfigError(f"train.dist_timeout={train_cfg.dist_timeout}: must be a positive number of minutes")
    seed_everything(int(train_cfg.seed))
    device = resolve_device(train_cfg.device)
    try:
        dist.init_distributed(device.type, timeout_minutes=float(train_cfg.dist_timeout))
    except (torch.distributed.DistStoreError, torch.distributed.DistNetworkError) as exc:
        address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise TrainingError(f"joining the process group at {address} failed within train.dist_timeout="
                            f"{train_cfg.dist_timeout} minutes: {' '.join(str(exc).split())[:200]}") from None
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class SeededSamples(Dataset):
    """Draws sample `index` of epoch `epoch` with torch, numpy and random seeded from (seed, epoch, index): the
    augmentation of a sample does not depend on which worker loads it or on what was loaded before, so a run resumed
    mid-epoch sees exactly the batches it would have seen, with any num_workers. The caller's RNG state is restored
    afterwards (with num_workers=0 loading runs in the training process, whose RNG drives dropout and masking)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + int(index)) % 2 ** 63
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                seed_everything(seed)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _dataset_name(dataset: Dataset) -> str:
    """Where a dataset comes from, for messages: the folder or index/annotation file the data readers keep."""
    for attribute in ("root", "index_file", "ann_file"):
        if getattr(dataset, attribute, None):
            return str(getattr(dataset, attribute))
    return "the training set"


class Trainer:
    """Runs `loss_fn(model, batch, device) -> (loss, {name: float or detached scalar tensor})` over `train_dataset`
    with the `train` config. The loop counts optimizer updates and calls its hooks after each update and epoch
    (`register_hooks`; a loop used on its own gets `hooks.default_hooks`: EMA, logging, progress bar, periodic
    checkpoints and evaluations).

    evaluate_fn(model) -> {metric: value} runs on every rank at `eval_period` and at the end (the metrics are the
    main process's; {} on the others).
    device: the device of a process that the task runner has set up (`setup_process`); without it the trainer sets
    up the process itself (a loop used on its own).
    stage: the `progress` stage that `fit` announces ('train', or 'pretrain' for MAE pretraining).
    data_name: the training data in messages (default: the dataset's folder or index file).
    checkpoint_meta: plain data every checkpoint carries under 'meta' (e.g. the class names, for prediction).

    The training set's size is checked when the trainer is built; `fit` first loads the `train.resume` checkpoint,
    and only then writes into the output dir.
    """

    def __init__(self, cfg: DictConfig, model: nn.Module, param_groups: List[Dict], train_dataset: Dataset,
                 loss_fn: Callable, output_dir: Optional[str] = None, collate_fn: Optional[Callable] = None,
                 evaluate_fn: Optional[Callable] = None, find_unused_parameters: bool = False, stage: str = "train",
                 data_name: Optional[str] = None, checkpoint_meta: Optional[Dict] = None,
                 device: Optional[torch.device] = None):
        self.cfg, self.train_cfg, self.stage = cfg, cfg.train, stage
        self.device = device if device is not None else setup_process(cfg.train)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.output_dir = Path(output_dir or cfg.train.output_dir)
        self.loss_fn, self.evaluate_fn, self.collate_fn = loss_fn, evaluate_fn, collate_fn
        self.checkpoint_meta = dict(checkpoint_meta or {})
        if cfg.train.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp=fp16 needs a CUDA device; use bf16 on CPU")
        self._plan_iterations(train_dataset, data_name)
        self._build_model(model, param_groups, find_unused_parameters)
        self.checkpointer = Checkpointer(self.output_dir, int(cfg.train.keep_checkpoints))
        self.hooks: List[Hook] = []
        self.last_checkpoint: Optional[tuple] = None  # (path, iteration) of the newest checkpoint of this run
        self.metrics: Dict = {}
        self._stop_reason: Optional[str] = None  # a hook's request to end the run early
        self._open_hooks: List[Hook] = []

    def register_hooks(self, hooks: Sequence[Hook]) -> None:
        """Add `hooks` to the run, after those registered before (see `hooks.build_hooks` for a run's list)."""
        self.hooks.extend(hooks)

    def request_stop(self, reason: str) -> None:
        """End the run after the current update as if it were the last one (final checkpoint and evaluation); any
        process may ask, every process stops at the same update."""
        self._stop_reason = reason

    # -- set-up ----------------------------------------------------------------------------------------------------
    def _plan_iterations(self, train_dataset: Dataset, data_name: Optional[str]) -> None:
        """The sampler and the run's length: batches per epoch, updates per epoch, total updates, effective batch
        and peak lr; a training set too small for one update is a TrainingError."""
        t = self.train_cfg
        self.sampler = EpochSampler(len(train_dataset), True, int(t.seed), self.rank, self.world_size)
        self.batches_per_epoch = self.sampler.per_rank // int(t.batch_size)
        if self.batches_per_epoch < t.accum_iter:
            per_update = int(t.batch_size) * int(t.accum_iter) * self.world_size
            raise TrainingError(
                f"{data_name or _dataset_name(train_dataset)}: the training set has {len(train_dataset)} samples, "
                f"too few for one update of batch_size {t.batch_size} x accum_iter {t.accum_iter} x "
                f"{self.world_size} process{'es' * (self.world_size != 1)} = {per_update} samples")
        self.dataset = SeededSamples(train_dataset, int(t.seed))
        self.iters_per_epoch = self.batches_per_epoch // int(t.accum_iter)
        self.by_iters = int(t.max_iters) > 0
        self.total_iters = int(t.max_iters) if self.by_iters else int(t.epochs) * self.iters_per_epoch
        self.num_epochs = math.ceil(self.total_iters / self.iters_per_epoch)
        self.effective_batch = int(t.batch_size) * int(t.accum_iter) * self.world_size
        self.peak_lr = base_lr(t, self.effective_batch)
        self.epoch, self.iter, self.batch_in_epoch = 0, 0, 0

    def _build_model(self, model: nn.Module, param_groups: List[Dict], find_unused_parameters: bool) -> None:
        """The model on its device (DDP-wrapped across processes), the optimizer and the fp16 loss scaler."""
        t = self.train_cfg
        self.model_without_ddp = model.to(self.device)
        self.model = model
        if self.world_size > 1:
            self.model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda"
                                                 else None, find_unused_parameters=find_unused_parameters)
        self.optimizer = build_optimizer(t, param_groups)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")

    def _compile(self) -> None:
        """torch.compile as train.compile says. nn.Module.compile works in place (after the EMA hook's deep copy):
        parameter names, checkpoints and DDP stay as they are, and evaluation runs compiled too. A model may compile
        only its part that has no graph breaks (MaskRCNN: its backbone). Under DDP the backward is one compiled
        graph, so gradients are all-reduced after it rather than overlapped with it."""
        t = self.train_cfg
        if t.compile:
            self.model_without_ddp.compile(mode=None if t.compile is True else str(t.compile))

    def _claim_output_dir(self) -> None:
        """Create the output dir and, on the main process, lock it for this run, remove what killed writers left
        there and write the resolved config."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._folder_lock = RunFolderLock(self.output_dir) if dist.is_main_process() else None
        if dist.is_main_process():
            for path in remove_stale_temporaries(self.output_dir):
                print(f"removed {path}, a temporary file left by a stopped run")
            save_config(self.cfg, self.output_dir / "config.yaml")

    @property
    def evaluation_model(self) -> nn.Module:
        """The weights that are evaluated: their EMA when the run keeps one."""
        averaged = next((h for h in self.hooks if isinstance(h, WeightAverage)), None)
        return averaged.module if averaged is not None else self.model_without_ddp

    # -- checkpoints -------------------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.checkpointer.path

    def save_checkpoint(self) -> None:
        """The training checkpoint of this moment (`Checkpointer`), then the hooks' after_checkpoint."""
        self.checkpointer.save(self)
        for hook in self.hooks:
            hook.after_checkpoint(self)
        dist.barrier()
        self.last_checkpoint = (self.checkpoint_path(), self.iter)

    def resume(self, path) -> None:
        """Continue the run that wrote `path`: weights, optimizer, hooks (EMA), position and every process's RNGs."""
        path = Path(path)
        ckpt = self.checkpointer.load(self, path)
        self.epoch, self.iter, self.batch_in_epoch = ckpt["epoch"], ckpt["iter"], ckpt["batch_in_epoch"]
        rng = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]  # older files: one process's state
        self._resume_rng = rng[self.rank] if len(rng) == self.world_size else None
        self.last_checkpoint = (path, self.iter)
        if dist.is_main_process():
            print(f"resumed from {path} at epoch {self.epoch}, iteration {self.iter}")
            if len(rng) != self.world_size:
                print(f"warning: {path} was written by {len(rng)} process(es) and this run has {self.world_size}: "
                      f"the RNGs are reseeded from (seed, epoch, rank), so the resumed run is not bit-exact with "
                      f"an uninterrupted one", file=sys.stderr)

    def _maybe_resume(self) -> None:
        """Resume as train.resume says; 'auto' starts afresh when the output dir has no checkpoint."""
        self._resume_rng = None
        target = self.train_cfg.resume
        if target == "auto":
            target = self.checkpointer.latest() or ""
        if target:
            self.resume(target)

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self) -> Dict:
        if self.evaluate_fn is None:
            return {}
        model = self.evaluation_model
        model.eval()
        with torch.no_grad():
            metrics = self.evaluate_fn(model)
        self.model_without_ddp.train()
        for hook in self.hooks:
            hook.after_evaluate(self, metrics)
        self.metrics = metrics
        return metrics

    # -- the loop ------------------------------------------------------------------------------------------------
    def fit(self) -> Dict:
        """Train: load train.resume, claim the output dir, run the loop with its hooks, write the final checkpoint
        and evaluate; returns the final metrics (the main process's; {} on the others)."""
        if not self.hooks:
            self.register_hooks(default_hooks(self))
        self._compile()
        self._maybe_resume()
        self._claim_output_dir()
        self.model.train()
        start_time = time.time()
        progress.begin_stage(self.stage, f"{self.total_iters} iterations of {self.effective_batch} images "
                             f"({self.num_epochs} epoch{'s' * (self.num_epochs != 1)}) into {self.output_dir}"
                             + (f", from iteration {self.iter}" if self.iter else ""))
        self._open_hooks = list(self.hooks)
        try:
            with StopRequests() as self._stop:
                for hook in self.hooks:
                    hook.before_train(self)
                self._train_loop()
                self.save_checkpoint()
                for hook in self.hooks:
                    hook.after_train(self)
                if dist.is_main_process():
                    print(f"{progress.STAGE_TITLES[self.stage]} done: {self.iter} iterations in "
                          f"{progress.format_duration(time.time() - start_time)}; checkpoint {self.checkpoint_path()}")
                self._stop_if_asked()  # the final evaluation then runs in the requeued job
                if self.evaluate_fn is not None:
                    weights = "model" if self.evaluation_model is self.model_without_ddp else "EMA of the weights"
                    progress.begin_stage("evaluate", f"the final {weights} on the validation set")
                return self.evaluate()
        except RunStopped as stopped:
            self._close_hooks()  # the bar ends before the announcement
            self._announce_stop(stopped)
            raise
        except RuntimeError as exc:  # a collective that failed because another process or node is gone
            lost = dist.group_failure(exc)
            if lost is None:
                raise
            raise TrainingError(f"{lost} in iteration {self.iter + 1} of {self.total_iters}; {self._kept()}: run the "
                                f"same command with --resume auto to continue") from None
        finally:
            self._close_hooks()  # also after a failure: no file stays open, the bar ends before the error line
            if self._folder_lock is not None:  # the folder is free for the next run, also after a failure
                self._folder_lock.release()

    def _close_hooks(self) -> None:
        """Close every hook once (a second call finds them closed and does nothing)."""
        hooks, self._open_hooks = self._open_hooks, []
        for hook in hooks:
            hook.close()

    def _train_loop(self) -> None:
        accum = int(self.train_cfg.accum_iter)
        ended_early = False
        while self.iter < self.total_iters and not ended_early:
            if self._resume_rng is not None and self.batch_in_epoch > 0:
                set_rng_state(self._resume_rng)  # continue mid-epoch exactly where the checkpoint was taken
            else:
                seed_everything(int(self.train_cfg.seed) + 1000 * self.epoch + self.rank)
            self._resume_rng = None
            for hook in self.hooks:
                hook.before_epoch(self)
            pending: Dict = {}
            micro = 0
            for batch in self._loader():
                if self.batch_in_epoch >= self.iters_per_epoch * accum:
                    break  # leftover micro-batches that cannot fill an update
                if micro % accum == 0:
                    lr = self._set_lr()
                stepped = self._train_step(batch, micro, accum, pending)
                micro += 1
                self.batch_in_epoch += 1
                if not stepped:
                    continue
                self.iter += 1
                for hook in self.hooks:
                    hook.after_update(self, {"lr": lr, **pending})
                pending = {}
                if self.iter >= self.total_iters:
                    break
                ended_early = self._stop_if_asked()
                if ended_early:
                    break
            if self.batch_in_epoch >= self.iters_per_epoch * accum:
                self.epoch += 1
                self.batch_in_epoch = 0
                for hook in self.hooks:
                    hook.after_epoch(self)

    def _loader(self) -> ShieldedDataLoader:
        t = self.train_cfg
        self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * int(t.batch_size))
        self.dataset.epoch = self.epoch  # workers are started per epoch (not persistent) and copy it
        # An own generator: the loader's base seed would otherwise be drawn from the training process's RNG
        return ShieldedDataLoader(self.dataset, batch_size=int(t.batch_size), sampler=self.sampler, drop_last=True,
                                  num_workers=int(t.num_workers), collate_fn=self.collate_fn,
                                  generator=torch.Generator().manual_seed(int(t.seed) + self.epoch),
                                  pin_memory=self.device.type == "cuda", persistent_workers=False)

    def _set_lr(self) -> float:
        lr = lr_at(self.train_cfg, self.iter, self.total_iters, self.iters_per_epoch, self.peak_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def _train_step(self, batch, micro: int, accum: int, pending: Dict) -> bool:
        """One micro-batch; returns True when it completed an optimizer update."""
        last_micro = (micro + 1) % accum == 0
        sync = nullcontext() if last_micro or self.world_size == 1 else self.model.no_sync()
        with sync:
            try:
                with amp.autocast(self.device.type, self.train_cfg.amp):
                    loss, logs = self.loss_fn(self.model, batch, self.device)
            except FloatingPointError as exc:  # a loss_fn that detects divergence itself (detection: its proposals)
                raise self._diverged(str(exc)) from None
            value = loss.item()
            if not math.isfinite(value):
                raise self._diverged(f"loss is {value}")
            self.scaler.scale(loss / accum).backward()
        pending["loss"] = pending.get("loss", 0.0) + value / accum
        for k, v in logs.items():
            pending[k] = pending.get(k, 0.0) + v / accum  # tensors stay on the device until a log step reads them
        if not last_micro:
            return False
        if self.train_cfg.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.train_cfg.clip_grad))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def _diverged(self, what: str) -> TrainingError:
        """The error that stops a diverging run, naming the update (counted from 1, as in log.jsonl) and the
        checkpoint that really exists."""
        return TrainingError(f"{what} at iteration {self.iter + 1} (epoch {self.epoch + 1}); training stopped, "
                             f"{self._kept()} (try train.amp=bf16 or a lower lr)")

    def _kept(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written"
        return f"the last checkpoint is {self.last_checkpoint[0]} (iteration {self.last_checkpoint[1]})"

    # -- stop signals --------------------------------------------------------------------------------------------
    def _stop_if_asked(self) -> bool:
        """At an iteration boundary: when any process got a stop signal, all of them write the checkpoint (unless it
        was just written) and raise RunStopped; when a hook on any process asked to end the run early
        (`request_stop`), all of them return True and the run ends as at its last update."""
        signalled = self._stop.code != NO_STOP
        if not dist.any_process(signalled or self._stop_reason is not None):
            return False  # one small all-reduce a boundary; the details only when something asked
        if not dist.any_process(signalled):
            reason = next(r for r in dist.all_gather_object(self._stop_reason) if r is not None)
            if dist.is_main_process():
                print(f"ending the run early at iteration {self.iter} of {self.total_iters}: {reason}", flush=True)
            return True
        requests = dist.all_gather_object((self._stop.code, self._stop.signal_name))
        code, name = max(requests)
        if self.last_checkpoint != (self.checkpoint_path(), self.iter):
            self.save_checkpoint()
        job = slurm.job_id() if code == STOP_AND_REQUEUE else None
        raise RunStopped(f"stopped by {name} at iteration {self.iter} of {self.total_iters}; checkpoint "
                         f"{self.checkpoint_path()} written", name, str(self.checkpoint_path()), requeue_job=job)

    def _announce_stop(self, stopped: RunStopped) -> None:
        """Say where the run stopped and how it goes on; requeue the Slurm job when a time-limit warning stopped it."""
        if not dist.is_main_process():
            return
        if stopped.requeue_job:
            print(f"{stopped}; requeueing Slurm job {stopped.requeue_job}, which resumes from there", flush=True)
            try:
                slurm.requeue_job(stopped.requeue_job)
            except slurm.RequeueError as exc:
                print(f"warning: {exc}; submit the same command again to resume", file=sys.stderr, flush=True)
        elif slurm.job_id():
            print(f"{stopped}; a requeued or preempted job resumes from there", flush=True)
        else:
            print(f"{stopped}; run the same command with --resume auto to continue", flush=True)
