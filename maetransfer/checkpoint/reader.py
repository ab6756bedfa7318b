"""Safe reading of checkpoint files and Hugging Face `save_pretrained` folders: `torch.load(weights_only=True)` with an
allow-list, a NumPy-only unpickler for plain pickles, safetensors; every failure is one line naming the file."""
import argparse
import json
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .core import CheckpointError, StateDict


def _numpy_globals() -> list:
    """NumPy array reconstruction (plain data) for RNG states and detectron2's pickled weights."""
    core = getattr(np, "_core", None) or np.core
    dtype_classes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [core.multiarray._reconstruct, core.multiarray.scalar, np.ndarray, np.dtype] + dtype_classes


_SAFE_GLOBALS = [argparse.Namespace] + _numpy_globals()
_SAFE_PICKLE_NAMES = {f"{g.__module__}.{g.__qualname__}": g for g in _SAFE_GLOBALS}
_SAFE_PICKLE_NAMES["collections.OrderedDict"] = OrderedDict
_UNSAFE_HINT = "pass --unsafe-load (unsafe=True) only if you trust the file, since unpickling it can run code"


class _RestrictedUnpickler(pickle.Unpickler):
    """Plain pickles (detectron2 .pkl): only NumPy arrays, OrderedDict and Namespace may be constructed."""

    def find_class(self, module, name):
        full = f"{module}.{name}"
        if full in _SAFE_PICKLE_NAMES:
            return _SAFE_PICKLE_NAMES[full]
        raise pickle.UnpicklingError(f"unsafe global {full}")


def _unsafe_globals(path: Path) -> List[str]:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # the listing itself can fail on odd files; the caller still has the load error
        return []
    return [n for n in names if n not in _SAFE_PICKLE_NAMES and not n.startswith("numpy")]


def _torch_load(path: Path, unsafe: bool, mmap: bool = False):
    if unsafe:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        names = _unsafe_globals(path) or ["an object that is not plain data"]
        raise CheckpointError(f"{path}: refused to unpickle {', '.join(names)} with weights_only loading; "
                              f"{_UNSAFE_HINT}") from None


def _pickle_load(path: Path, unsafe: bool):
    with open(path, "rb") as f:
        if unsafe:
            return pickle.load(f, encoding="latin1")
        try:
            return _RestrictedUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as exc:
            if str(exc).startswith("unsafe global"):
                raise CheckpointError(f"{path}: refused to unpickle {str(exc)[len('unsafe global '):]}; "
                                      f"{_UNSAFE_HINT}") from None
            raise


def _load_safetensors(path: Path) -> StateDict:
    from safetensors.torch import load_file
    return load_file(str(path))


def _read_hf_folder(path: Path, unsafe: bool) -> Tuple[StateDict, dict]:
    config = {}
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index_name).is_file():
            shards = sorted(set(json.loads((path / index_name).read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(_read_file(path / shard, unsafe))
            return state, config
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return _read_file(path / name, unsafe), config
    if (path / "checkpoint.pth").is_file():  # a run's output folder
        raise CheckpointError(f"{path}: a folder; pass the checkpoint inside it, {path / 'checkpoint.pth'}")
    raise CheckpointError(f"{path}: folder has no model.safetensors or pytorch_model.bin (not a save_pretrained "
                          f"folder)")


def _read_file(path: Path, unsafe: bool, mmap: bool = False):
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if zipfile.is_zipfile(path):
        return _torch_load(path, unsafe, mmap)
    obj = _pickle_load(path, unsafe)
    if isinstance(obj, int):  # the magic number that opens torch's legacy (pre-1.6) format
        return _torch_load(path, unsafe)
    return obj


def read_raw(path: Union[str, Path], unsafe: bool = False, mmap: bool = False) -> Tuple[object, dict]:
    """The file's object (or a HF folder's state dict) and a HF config if there is one. Names of released
    checkpoints and hub ids are resolved into files above this module (`maetransfer.zoo.resolve`). `mmap`: the
    tensors of a torch zip file are mapped, not read, until they are used (a look at shapes and metadata costs
    next to nothing; other formats are read whole)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found (no such file or folder)")
    try:
        if path.is_dir():
            return _read_hf_folder(path, unsafe)
        return _read_file(path, unsafe, mmap), {}
    except CheckpointError:
        raise
    except Exception as exc:  # truncated zip, garbage bytes, bad safetensors header: one line naming the file
        detail = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: not a readable checkpoint, the file may be truncated or corrupt "
                              f"({type(exc).__name__}: {detail})") from None


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers


def unwrap_state(obj, source: str) -> Tuple[StateDict, Optional[dict]]:
    """The state dict inside a checkpoint object, and the other top-level entries (None for a bare state dict)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    for key in ("model", "state_dict", "module"):
        if isinstance(obj.get(key), dict):
            state, rest = obj[key], {k: v for k, v in obj.items() if k != key}
            break
    else:
        state, rest = obj, None
    state = dict(state)
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    state = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: '{bad[0]}' is a {type(state[bad[0]]).__name__}, not a tensor: not a "
                              f"model state dict")
    return state, rest
