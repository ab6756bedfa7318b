"""Files written whole or not at all. Every writer of the project goes through `atomic_write`: the content goes to a
temporary file next to its destination, named `.<name>.tmp<pid of the writer>`, which is renamed over the destination
once complete. A crash leaves the previous file intact plus at most a temporary file, which
`remove_stale_temporaries` recognises by that one name pattern; a full disk or a lost permission is one line naming
the file (and the space needed), with the temporary file removed."""
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Callable, List, Optional, Union

from .errors import InputError

PathLike = Union[str, os.PathLike]

TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.tmp(?P<pid>\d+)")

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


class OutputWriteError(InputError, OSError):
    """A file could not be written: no space left on its disk, or no permission."""


def temporary_path(path: PathLike) -> Path:
    """Where `path` is written before it is renamed into place (a file, or a folder published whole)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def atomic_write(path: PathLike, write: Callable[[Path], None], size: Optional[int] = None) -> Path:
    """`write(temporary path)`, then rename it to `path` (folders created). `size`: about how many bytes the file
    takes, for the message when the disk is full. Raises OutputWriteError when the disk is full or the folder not
    writable; the temporary file is removed whatever fails."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        problem = _write_problem(exc, path, size)
        if problem:
            raise OutputWriteError(f"cannot write {path}: {problem}") from None
        raise
    return path


def _write_problem(exc: BaseException, path: Path, size: Optional[int]) -> Optional[str]:
    """What a user can fix about a failed write, or None for any other failure."""
    code = getattr(exc, "errno", None)
    if code in _NO_PERMISSION:
        return f"{os.strerror(code).lower()} (check the permissions of {path.parent})"
    # torch.save's zip writer reports a failed write as a RuntimeError without errno ("unexpected pos ...",
    # "PytorchStreamWriter failed writing file"); the free space then tells whether the disk was full.
    torch_writer = isinstance(exc, RuntimeError) and ("unexpected pos" in str(exc) or "PytorchStreamWriter" in str(exc))
    if code not in _NO_SPACE and not torch_writer:
        return None
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if code not in _NO_SPACE and size is not None and free >= size:
        return None
    needed = f"{format_bytes(size)} needed, " if size is not None else ""
    return f"no space left on its disk ({needed}{format_bytes(free)} free); free some space or write elsewhere"


def write_text(path: PathLike, text: str) -> Path:
    data = text.encode()
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), len(data))


def save_torch(obj, path: PathLike) -> Path:
    """torch.save, atomically."""
    import torch  # here: the light users of this module (config files) need not import torch

    def write(tmp: Path) -> None:
        # Our own file object, closed whatever happens: a failed torch.save(path) leaves its file open (its space
        # not freed) for as long as the exception is referenced.
        with open(tmp, "wb") as file:
            torch.save(obj, file)

    return atomic_write(path, write, _tensor_bytes(obj))


def _tensor_bytes(obj, seen: Optional[set] = None) -> int:
    """The bytes of the tensors in a nested checkpoint object (each storage counted once): its size on disk, near
    enough."""
    import torch

    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def remove_stale_temporaries(folder: PathLike) -> List[Path]:
    """Delete the temporary files that killed writers left in `folder` (a checkpoint's is as large as the checkpoint):
    those whose writer no longer runs, or whose pid is this process's own (a pid reused after a restart, e.g. in a
    container; this process has not written yet). A live process's file is kept: it may still be writing it."""
    removed = []
    for path in sorted(Path(folder).glob(".*.tmp*")):
        match = TEMPORARY_NAME.fullmatch(path.name)
        if match and path.is_file() and (int(match["pid"]) == os.getpid() or not _process_alive(int(match["pid"]))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
