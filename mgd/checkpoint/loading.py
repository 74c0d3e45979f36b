"""Reading checkpoints as data, never as code.

* pickles (``.pkl``, Detectron2's format) are read with :class:`RestrictedUnpickler`, which
  admits only builtin containers, numbers, strings, bytes and numpy arrays / dtypes /
  scalars; any other global named by the pickle (``os.system``, ``builtins.eval``, a torch
  class, ...) is refused before it is resolved, so its code never runs;
* torch files (``.pth``) are read with ``torch.load(weights_only=True)``, with numpy arrays
  allowlisted.

The format is sniffed from the file's first bytes, not from its name. Every problem a user
can cause (missing, empty, truncated or foreign file, wrong contents) raises
:class:`~mgd.checkpoint.errors.CheckpointError` with a one-line message. numpy and torch
are imported only when a file needs them.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Tuple

if TYPE_CHECKING:
    import numpy as np

from .errors import CheckpointError, short_exception as _short

__all__ = [
    "RestrictedUnpickler",
    "DisallowedGlobal",
    "restricted_loads",
    "load_checkpoint_object",
    "extract_state_dict",
    "load_checkpoint",
    "to_numpy",
    "RANDOM_INIT_KEY",
    "is_random_init",
]

# torch's legacy (pre-1.6, non-zip) serialization starts with this pickled integer.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"


# --------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------

def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    if not isinstance(obj, str):
        raise pickle.UnpicklingError("_codecs.encode of a non-string is not allowed")
    return obj.encode("latin-1")


_ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    # builtin containers, numbers, strings, bytes
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bytes"): bytes,
    ("builtins", "str"): str,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "complex"): complex,
    ("builtins", "bool"): bool,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _safe_codecs_encode,
}


@functools.lru_cache(maxsize=None)
def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    """numpy arrays, dtypes and scalars (numpy 1.x and 2.x module names), built on first use."""
    import numpy as np

    reconstruct = np.ndarray((0,)).__reduce__()[0]   # numpy.(_)core.multiarray._reconstruct
    scalar = np.float32(0).__reduce__()[0]           # numpy.(_)core.multiarray.scalar
    frombuffer = np.arange(1).__reduce_ex__(5)[0]    # numpy.(_)core.numeric._frombuffer

    def safe_reconstruct(subtype, shape, dtype):
        # Only plain ndarrays: a subclass could bring its own __setstate__/__array_finalize__.
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("only numpy.ndarray may be reconstructed")
        return reconstruct(np.ndarray, shape, dtype)

    def safe_frombuffer(buf, dtype, shape, order):
        return frombuffer(buf, dtype, shape, order)

    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        table[(core + ".multiarray", "_reconstruct")] = safe_reconstruct
        table[(core + ".multiarray", "scalar")] = scalar
        table[(core + ".numeric", "_frombuffer")] = safe_frombuffer
    return table


class DisallowedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowlist."""

    def __init__(self, module: str, name: str):
        self.qualname = f"{module}.{name}"
        super().__init__(f"disallowed global {self.qualname}")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allowlisted globals (see module docstring).

    Anything else - functions such as ``os.system`` or ``builtins.open``, arbitrary classes,
    torch objects - raises :class:`DisallowedGlobal` before it is imported, so no code from
    the file can run. Persistent ids (used by torch storages) are refused too.
    """

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if module == "__builtin__":  # Python 2 name (also written by protocol < 3 pickles)
            module = "builtins"
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None and module.split(".", 1)[0] == "numpy":
            found = _numpy_globals().get((module, name))
        if found is None:
            raise DisallowedGlobal(module, name)
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids (torch storages) are not allowed in a pickle")


def restricted_loads(data: bytes) -> Any:
    """Unpickle bytes with :class:`RestrictedUnpickler` (latin1 for Python 2 pickles)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _numpy_safe_globals() -> list:
    """numpy globals to allowlist for torch.load(weights_only=True)."""
    import numpy as np

    items = [np.ndarray((0,)).__reduce__()[0], np.float32(0).__reduce__()[0],
             np.ndarray, np.dtype]
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        for kind in ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
                     "UInt64", "Float16", "Float32", "Float64", "Complex64", "Complex128",
                     "Byte", "UByte", "Short", "UShort", "Int", "UInt", "Long", "ULong",
                     "LongLong", "ULongLong", "LongDouble", "Bytes", "Str"):
            cls = getattr(dtypes_mod, kind + "DType", None)
            if cls is not None and cls not in items:
                items.append(cls)
    return items


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

def _check_input_file(path: Path, what: str) -> None:
    if not path.exists():
        hint = ""
        if path.parent.is_file():
            hint = f" ({str(path.parent)!r} is a file, not a folder)"
        elif not path.parent.exists():
            hint = f" (folder {str(path.parent)!r} does not exist either)"
        raise CheckpointError(f"{what} {str(path)!r} not found{hint}; check the path")
    if path.is_dir():
        raise CheckpointError(f"{what} {str(path)!r} is a folder, not a checkpoint file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{what} {str(path)!r} is not readable; check its permissions")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {str(path)!r} is empty (0 bytes); "
                              "it was probably cut off while being written: recreate it")


def _describe_kind(head: bytes) -> str:
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head[:3] == b"\xff\xd8\xff":
        return "a JPEG image"
    if head.startswith(b"{") or head.startswith(b"["):
        return "a JSON/text file"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip archive"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "not a pickle or torch file"


def _refused_global_message(path: Path, what: str, qualname: str) -> str:
    return (f"refusing to load {what} {str(path)!r}: it references {qualname!r}, and "
            "checkpoints are read as data only (containers, numbers, strings, numpy arrays, "
            "tensors); re-save the weights as a plain state dict from a trusted source")


def _torch_load(path: Path, what: str) -> Any:
    try:
        import torch  # noqa: WPS433 - lazy: only needed for torch files
    except ImportError:
        raise CheckpointError(f"{what} {str(path)!r} is a torch file, but torch is not "
                              "installed; install torch or pass a .pkl") from None
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (RuntimeError, UnpicklingError, ...)
        text = str(exc)
        match = re.search(r"GLOBAL ([\w.]+)", text)
        if match is None:
            match = re.search(r"but got <class '([\w.]+)'>", text)
        if match is not None:
            raise CheckpointError(_refused_global_message(path, what, match.group(1))) from None
        if isinstance(exc, (EOFError, zipfile.BadZipFile)) or "zip archive" in text \
                or "central directory" in text or "EOF" in text:
            raise CheckpointError(f"{what} {str(path)!r} is a truncated or corrupt torch file "
                                  f"({_short(exc, 100)}); recreate or re-download it") from None
        raise CheckpointError(f"cannot read {what} {str(path)!r} as a torch checkpoint "
                              f"({_short(exc)})") from None


def load_checkpoint_object(path, what: str = "checkpoint") -> Any:
    """Load the top-level object of a checkpoint file, safely (see module docstring)."""
    path = Path(path)
    _check_input_file(path, what)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {str(path)!r}: {_short(exc)}") from None

    if head.startswith(_ZIP_MAGIC):
        return _torch_load(path, what)

    if not head.startswith(b"\x80") and not head[:1] in (b"(", b"}", b"]"):
        # Not a pickle (protocol >= 2 starts with \x80; protocol 0/1 dicts/lists with ( } ]).
        raise CheckpointError(f"{what} {str(path)!r} is not a checkpoint (it looks like "
                              f"{_describe_kind(head)}); pass a .pkl or .pth checkpoint")
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except DisallowedGlobal as exc:
        raise CheckpointError(_refused_global_message(path, what, exc.qualname)) from None
    except EOFError:
        raise CheckpointError(f"{what} {str(path)!r} is truncated (the pickle ends early); "
                              "recreate or re-download it") from None
    except MemoryError:
        raise CheckpointError(f"{what} {str(path)!r} is corrupt (absurd sizes inside)") from None
    except Exception as exc:  # UnpicklingError, ValueError, TypeError... from corrupt data
        raise CheckpointError(f"{what} {str(path)!r} is not a valid checkpoint pickle, or it "
                              f"is truncated or corrupt ({_short(exc, 100)})") from None

    if isinstance(obj, int) and not isinstance(obj, bool) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path, what)  # legacy (non-zip) torch serialization
    return obj


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value) -> "np.ndarray":
    """A numpy array from a numpy array/scalar or a torch tensor (bfloat16 -> float32)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if _is_tensor(value):
        import torch

        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    raise TypeError(f"not an array: {type(value).__name__}")


def extract_state_dict(obj: Any, path, what: str = "checkpoint") -> Dict[str, Any]:
    """The weights dict of a loaded checkpoint object.

    Accepts Detectron2/fvcore checkpoints ``{"model": {...}, ...}`` (torch or pickle),
    ``{"state_dict": {...}}``, and bare state dicts. Values must be arrays or tensors.
    """
    import numpy as np

    path = str(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path!r} holds a {type(obj).__name__}, not a dict of "
                              "weights; pass a Detectron2 or torchvision checkpoint")
    if "blobs" in obj and "model" not in obj:
        raise CheckpointError(f"{what} {path!r} is in the old Detectron (Caffe2) 'blobs' "
                              "format, which these scripts do not read; convert it with "
                              "Detectron2 first")
    state = obj
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            state = obj[key]
            break
    if not state:
        raise CheckpointError(f"{what} {path!r} contains no weights (empty model dict)")
    out: Dict[str, Any] = {}
    bad = []
    for key, value in state.items():
        if not isinstance(key, str):
            bad.append(repr(key))
            continue
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                bad.append(key)
                continue
        elif not _is_tensor(value):
            bad.append(key)
            continue
        out[key] = value
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise CheckpointError(f"{what} {path!r} is not a state dict of tensors: {len(bad)} "
                              f"entr{'y' if len(bad) == 1 else 'ies'} ({shown}) are not "
                              "arrays; pass a model checkpoint")
    return out


def load_checkpoint(path, what: str = "checkpoint") -> Dict[str, Any]:
    """Load a checkpoint's weights: ``{name: numpy array or torch tensor}``."""
    return extract_state_dict(load_checkpoint_object(path, what), path, what)


# A top-level key of the pickles made from randomly initialised (not ImageNet) weights
# (scripts/make_random_torchvision_weights.py, `make weights RANDOM_INIT=1`); merge keeps it.
RANDOM_INIT_KEY = "__random_init__"


def is_random_init(obj: Any) -> bool:
    """Whether a loaded checkpoint object carries the random-initialisation marker."""
    return isinstance(obj, dict) and obj.get(RANDOM_INIT_KEY) is True
