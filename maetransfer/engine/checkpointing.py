"""Checkpoints of the training engine: what they hold, how they are written (atomically, never half a file), how a
resume file is read and checked (one line naming the file when it cannot be resumed from, never unpickled beyond
tensors and plain data), and every process's RNG states, which make a resumed run bit-exact."""
import fcntl
import os
import pickle
import random
import socket
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from ..errors import InputError
from ..files import save_torch

CHECKPOINT_NAME = "checkpoint.pth"
EMA_NAME = "model_ema.pth"
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


def atomic_save(obj, path: Path) -> None:
    """torch.save through a temporary file and a rename: a crash never leaves a half-written checkpoint, a full disk
    is one line (`files.atomic_write`)."""
    save_torch(obj, path)


def _names(keys: List[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def state_mismatch(saved: Dict, expected: Dict) -> str:
    """How a saved state dict differs from a model's, in a few words ('' when names and shapes agree)."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    reshaped = [k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)]
    parts = [f"it lacks {_names(missing)}"] if missing else []
    parts += [f"it has {_names(unexpected)}, which this model lacks"] if unexpected else []
    if reshaped:
        key = reshaped[0]
        parts.append(f"{key} is {tuple(saved[key].shape)} in the file but {tuple(expected[key].shape)} in this model"
                     + (f", and {len(reshaped) - 1} more tensors differ in shape" if len(reshaped) > 1 else ""))
    return "; ".join(parts)


def read_training_checkpoint(path: Path) -> Dict:
    """The checkpoint at `path`, or TrainingError saying in one line why it cannot be resumed from."""
    if not path.exists():
        raise TrainingError(f"{path}: cannot resume: no such file (train.resume)")
    if not path.is_file():
        raise TrainingError(f"{path}: cannot resume: a folder, not a checkpoint file (train.resume)")
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
                            f"{_names(missing or ['model weights'])}); to start from its weights use "
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
