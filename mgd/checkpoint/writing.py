"""Writing checkpoints and other outputs: early path checks, atomic replace, D2 pickles.

Outputs are written to a temporary file in the destination folder and renamed into place,
so a failure (or Ctrl-C) never leaves a partial output behind.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import CheckpointError, short_exception as _short
from .loading import RANDOM_INIT_KEY, to_numpy

__all__ = ["check_output_path", "atomic_write", "save_d2_pickle", "human_size"]


def check_output_path(out, inputs: Iterable = (), what: str = "output") -> Path:
    """Fail early, with one clear line, if ``out`` cannot be written as a new file."""
    out = Path(out)
    parent = Path(os.path.abspath(out)).parent
    if not parent.exists():
        probe = parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise CheckpointError(f"cannot write {what} {str(out)!r}: {str(probe)!r} is a "
                                  "file, not a folder; choose another output path")
        raise CheckpointError(f"cannot write {what} {str(out)!r}: folder {str(parent)!r} "
                              f"does not exist; create it first (mkdir -p {parent})")
    if not parent.is_dir():
        raise CheckpointError(f"cannot write {what} {str(out)!r}: {str(parent)!r} is a file, "
                              "not a folder; choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {what} {str(out)!r}: folder {str(parent)!r} is "
                              "not writable; choose another output folder")
    if out.is_dir():
        raise CheckpointError(f"{what} {str(out)!r} is a folder; give a file name "
                              f"such as {str(out / 'model.pkl')!r}")
    for src in inputs:
        src = Path(src)
        try:
            same = src.exists() and out.exists() and os.path.samefile(src, out)
        except OSError:
            same = False
        if same or os.path.abspath(src) == os.path.abspath(out):
            raise CheckpointError(f"{what} {str(out)!r} is the same file as input "
                                  f"{str(src)!r}; choose another output name")
    return out


def atomic_write(path, write: Callable[[io.BufferedWriter], None], what: str = "output") -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``.

    On any failure (including KeyboardInterrupt) the temporary file is removed and ``path``
    is left as it was.
    """
    path = Path(path)
    check_output_path(path, what=what)
    parent = Path(os.path.abspath(path)).parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write {what} {str(path)!r}: {_short(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write {what} {str(path)!r}: {_short(exc)}") from None
        raise


def save_d2_pickle(model_dict: Mapping[str, Any], path, author: str = "TORCHVISION",
                   random_init: bool = False) -> int:
    """Write ``{"model": numpy arrays, "__author__": author, "matching_heuristics": True}``.

    ``random_init`` adds the marker ``"__random_init__": True`` (weights that descend from a
    random initialisation, not ImageNet). Atomic (temporary file + rename). Returns the
    number of bytes written.
    """
    model = {}
    for key, value in model_dict.items():
        try:
            model[key] = to_numpy(value)
        except TypeError:
            raise CheckpointError(f"cannot save entry {key!r}: it is a "
                                  f"{type(value).__name__}, not an array") from None
    payload = {"model": model, "__author__": author, "matching_heuristics": True}
    if random_init:
        payload[RANDOM_INIT_KEY] = True
    data = pickle.dumps(payload, protocol=4)
    atomic_write(path, lambda f: f.write(data))
    return len(data)


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GB"
