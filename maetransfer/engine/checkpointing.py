"""Checkpoints of the training engine: what they hold and how they are written (`Checkpointer`: atomically, never half
a file; an optional history and the `last_checkpoint` pointer), how a resume file is read and checked (one line naming
the file when it cannot be resumed from, never unpickled beyond tensors and plain data), and every process's RNG
states, which make a resumed run bit-exact."""
import fcntl
import os
import pickle
import random
import shutil
import socket
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..checkpoint.core import compare_state, name_list
from ..config import to_dict
from ..errors import InputError
from ..files import atomic_write, save_torch, write_text
from . import dist

CHECKPOINT_NAME = "checkpoint.pth"
LAST_CHECKPOINT_NAME = "last_checkpoint"  # a text file naming the newest checkpoint of the folder (as detectron2's)
EMA_NAME = "model_ema.pth"
BEST_NAME = "best.pth"
RUN_LOCK_NAME = ".run.lock"
# What a resumable checkpoint of this engine holds besides optional EMA weights and the config.
CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "epoch", "iter", "batch_in_epoch", "rng")


class TrainingError(InputError):
    """A run cannot start or go on because of its input: the resume file, the training set, or a diverging loss."""


def rng_state() -> Dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
            "python": random.getstate()}


def set_rng_state(state: Dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def check_resume_file(path: Path) -> None:
    """TrainingError unless `path` is a file (what the tools check before anything else runs)."""
    if not path.exists():
        raise TrainingError(f"{path}: cannot resume: no such file (train.resume)")
    if not path.is_file():
        raise TrainingError(f"{path}: cannot resume: a folder, not a checkpoint file (train.resume)")


def read_training_checkpoint(path: Path) -> Dict:
    """The checkpoint at `path`, or TrainingError saying in one line why it cannot be resumed from."""
    check_resume_file(path)
    try:
        with warnings.catch_warnings():  # e.g. about the pickle protocol: lines on top of the one-line report
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # A checkpoint of this engine holds only tensors and plain data: anything else is never unpickled
        # (it could run code), whatever --unsafe-load says.
        raise TrainingError(f"{path}: cannot resume: it holds Python objects that weights_only loading refuses "
                            f"to unpickle, so it is no checkpoint of this engine") from None
    except Exception as exc:
        raise TrainingError(f"{path}: cannot resume: corrupt or not a PyTorch file ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:160]})") from None
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(CHECKPOINT_KEYS)
    if missing or not (isinstance(ckpt["model"], dict) and all(map(torch.is_tensor, ckpt["model"].values()))):
        raise TrainingError(f"{path}: cannot resume: not a training checkpoint of this engine (no "
                            f"{name_list(missing or ['model weights'])}); to start from its weights use "
                            f"train.init_checkpoint")
    return ckpt


class RunFolderLock:
    """An exclusive lock on a run's output folder for as long as the run writes there (its main process holds it), so
    that a second run into the same folder ends with one line instead of mixing its files in. fcntl.flock on
    `<folder>/.run.lock`: the kernel releases it when the process ends, however it ends, so the lock of a killed run
    never blocks the next one. The file names its holder for that line."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / RUN_LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise TrainingError(f"{folder} is in use by another run ({holder}): wait for it to end, or choose another "
                                f"--output-dir") from None
        self._file.truncate(0)
        self._file.write(f"process {os.getpid()} on {socket.gethostname()}")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` with `source`'s bytes, atomically: a hard link (no second copy on disk; the next atomic write of
    `source` makes a new file, so the link keeps this one), or a copy where the file system has no links."""
    def write(tmp: Path) -> None:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    atomic_write(target, write)


def _hook_keys(hooks: Sequence) -> List[str]:
    """The name under which each hook's state is kept: its class name, '#2', '#3' ... after repeats."""
    keys, seen = [], {}
    for hook in hooks:
        name = type(hook).__name__
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def hook_states(checkpoint: Dict) -> Dict[str, Dict]:
    """The hooks' states of a checkpoint; files written before hooks had their own key kept the EMA at the top."""
    if "hooks" in checkpoint:
        return checkpoint["hooks"]
    return {"WeightAverage": {"model_ema": checkpoint["model_ema"]}} if "model_ema" in checkpoint else {}


class Checkpointer:
    """What a training checkpoint holds and how it is written. A checkpoint holds the model, the optimizer, the fp16
    loss scaler, the position (epoch, iter, batch_in_epoch), every process's RNG states, the resolved config, the
    task's `meta` (class names, for prediction) and, under 'hooks', the state of every hook that keeps one, by class
    name. `save` writes <output_dir>/checkpoint.pth atomically, then the pointer file `last_checkpoint` naming the
    newest checkpoint; with `keep` > 0 it also keeps checkpoint_<iteration>.pth, the newest `keep` of them."""

    def __init__(self, output_dir: Path, keep: int = 0):
        self.output_dir, self.keep = Path(output_dir), int(keep)

    @property
    def path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    def latest(self) -> Optional[Path]:
        """The checkpoint `last_checkpoint` names, else checkpoint.pth, else None (what --resume auto continues)."""
        pointer = self.output_dir / LAST_CHECKPOINT_NAME
        if pointer.is_file():
            named = self.output_dir / pointer.read_text().strip()
            if named.is_file():
                return named
        return self.path if self.path.is_file() else None

    def save(self, trainer) -> Path:
        """Every process: write the checkpoint of `trainer`'s current state (the main process writes)."""
        rng = dist.all_gather_object(rng_state())  # every process's own: each draws its own dropout and masks
        hooks = {key: state for key, hook in zip(_hook_keys(trainer.hooks), trainer.hooks)
                 if (state := hook.state_dict())}  # on every process: a hook may gather what it keeps
        if dist.is_main_process():
            save_torch({"model": trainer.model_without_ddp.state_dict(), "optimizer": trainer.optimizer.state_dict(),
                        "scaler": trainer.scaler.state_dict(), "epoch": trainer.epoch, "iter": trainer.iter,
                        "batch_in_epoch": trainer.batch_in_epoch, "rng": rng, "config": to_dict(trainer.cfg),
                        "meta": trainer.checkpoint_meta, "hooks": hooks}, self.path)
            newest = self.path
            if self.keep > 0:
                newest = self.output_dir / f"checkpoint_{trainer.iter:07d}.pth"
                _link_or_copy(self.path, newest)
                for old in sorted(self.output_dir.glob("checkpoint_*.pth"))[:-self.keep]:
                    old.unlink()
            write_text(self.output_dir / LAST_CHECKPOINT_NAME, newest.name + "\n")
        return self.path

    def load(self, trainer, path: Path) -> Dict:
        """Put the checkpoint at `path` into `trainer`'s model, optimizer, scaler and hooks; returns the checkpoint
        (its position and RNG states are the trainer's to apply). TrainingError (one line) when it cannot."""
        ckpt = read_training_checkpoint(path)
        mismatch = compare_state(ckpt["model"], trainer.model_without_ddp.state_dict())
        if mismatch:
            raise TrainingError(f"{path}: cannot resume: its weights are another model's: {mismatch}")
        states = hook_states(ckpt)
        try:
            trainer.model_without_ddp.load_state_dict(ckpt["model"])
            trainer.optimizer.load_state_dict(ckpt["optimizer"])
            trainer.scaler.load_state_dict(ckpt["scaler"])
            for key, hook in zip(_hook_keys(trainer.hooks), trainer.hooks):
                hook.load_state_dict(states.get(key), path)
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TrainingError(f"{path}: cannot resume: its optimizer or weights do not fit this run ({first})") \
                from None
        return ckpt
