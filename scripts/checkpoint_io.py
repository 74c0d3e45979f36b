"""Reading, checking and writing checkpoints for the MGD scripts, safely.

Checkpoints are treated as data, never as code:

* pickles (``.pkl``, Detectron2's format) are read with :class:`RestrictedUnpickler`, which
  admits only builtin containers, numbers, strings, bytes and numpy arrays / dtypes /
  scalars; any other global named by the pickle (``os.system``, ``builtins.eval``, a torch
  class, ...) is refused before it is resolved, so its code never runs;
* torch files (``.pth``) are read with ``torch.load(weights_only=True)``, with numpy arrays
  allowlisted.

The format is sniffed from the file's first bytes, not from its name.

Every problem a user can cause (missing, empty, truncated or foreign file, wrong keys, an
output folder that does not exist or cannot be written) raises :class:`CheckpointError`,
whose message is a single line saying what is wrong and how to fix it. Outputs are written
to a temporary file in the destination folder and renamed into place, so a failure never
leaves a partial output behind.

This module needs only the standard library and numpy, and imports numpy (and torch) only
when they are needed, so a refusal on a bad path or argument is immediate. torch is needed
only when a torch file or torch tensors are actually met. It does not need Detectron2.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import os
import pickle
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple


__all__ = [
    "CheckpointError",
    "RestrictedUnpickler",
    "restricted_loads",
    "load_checkpoint",
    "load_checkpoint_object",
    "extract_state_dict",
    "to_numpy",
    "check_output_path",
    "save_d2_pickle",
    "resnet_layout",
    "resnet_depth",
    "merge_teacher_student",
    "split_distilled",
    "convert_distilled",
    "OneLineArgumentParser",
    "run_cli",
    "TEACHER_PREFIX",
    "STUDENT_PREFIX",
    "STUDENT_BACKBONE_PREFIX",
]

TEACHER_PREFIX = "t_net."
STUDENT_PREFIX = "s_net."
STUDENT_BACKBONE_PREFIX = "s_net.backbone.bottom_up."
D2_BACKBONE_PREFIX = "backbone.bottom_up."

# Blocks per stage res2..res5 -> depth, for basic blocks and for bottlenecks.
_BASIC_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}
_BOTTLENECK_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
DEPTH_LAYOUTS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False),
                 50: ((3, 4, 6, 3), True), 101: ((3, 4, 23, 3), True),
                 152: ((3, 8, 36, 3), True)}

# torch's legacy (pre-1.6, non-zip) serialization starts with this pickled integer.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(Exception):
    """A user-facing problem with a checkpoint or an output path.

    The message is always a single line (newlines and runs of spaces are collapsed) that
    says what is wrong and, where possible, what to do about it.
    """

    def __init__(self, message: str):
        one_line = re.sub(r"\s+", " ", str(message)).strip()
        super().__init__(one_line)


def _short(exc: BaseException, limit: int = 160) -> str:
    """One-line, bounded description of an exception from a third-party loader."""
    text = re.sub(r"\s+", " ", str(exc)).strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


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


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

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


def save_d2_pickle(model_dict: Mapping[str, Any], path, author: str = "TORCHVISION") -> int:
    """Write ``{"model": numpy arrays, "__author__": author, "matching_heuristics": True}``.

    Atomic (temporary file + rename). Returns the number of bytes written.
    """
    model = {}
    for key, value in model_dict.items():
        try:
            model[key] = to_numpy(value)
        except TypeError:
            raise CheckpointError(f"cannot save entry {key!r}: it is a "
                                  f"{type(value).__name__}, not an array") from None
    payload = {"model": model, "__author__": author, "matching_heuristics": True}
    data = pickle.dumps(payload, protocol=4)
    atomic_write(path, lambda f: f.write(data))
    return len(data)


# --------------------------------------------------------------------------------------
# ResNet layout, merge and split
# --------------------------------------------------------------------------------------

_BLOCK_RE = re.compile(r"^res([2-5])\.(\d+)\.")


def resnet_layout(keys: Iterable[str], prefix: str = "") -> Optional[Tuple[Tuple[int, ...], bool]]:
    """Blocks per stage res2..res5 and whether blocks are bottlenecks, from key names.

    ``prefix`` is stripped first (e.g. ``"backbone.bottom_up."``). Returns None when the keys
    do not describe a Detectron2-style ResNet (no ``resN.i.`` keys).
    """
    blocks: Dict[int, set] = {2: set(), 3: set(), 4: set(), 5: set()}
    bottleneck = False
    found = False
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        m = _BLOCK_RE.match(rest)
        if not m:
            continue
        found = True
        blocks[int(m.group(1))].add(int(m.group(2)))
        if rest[m.end():].startswith("conv3."):
            bottleneck = True
    if not found:
        return None
    return tuple(len(blocks[s]) for s in (2, 3, 4, 5)), bottleneck


def resnet_depth(keys: Iterable[str], prefix: str = "") -> Optional[int]:
    """The ResNet depth (18, 34, 50, 101, 152) read from key names, or None if unknown."""
    layout = resnet_layout(keys, prefix)
    if layout is None:
        return None
    counts, bottleneck = layout
    return (_BOTTLENECK_DEPTHS if bottleneck else _BASIC_DEPTHS).get(counts)


def _layout_text(keys, prefix="") -> str:
    layout = resnet_layout(keys, prefix)
    if layout is None:
        return "no ResNet stages"
    counts, bottleneck = layout
    depth = (_BOTTLENECK_DEPTHS if bottleneck else _BASIC_DEPTHS).get(counts)
    kind = "bottleneck" if bottleneck else "basic"
    name = f"ResNet-{depth}" if depth else "an unknown ResNet"
    return f"{name} ({kind} blocks {list(counts)} per stage)"


def _check_depth(keys, prefix: str, expected: Optional[int], role: str, path: str,
                 hint: str) -> Optional[int]:
    found = resnet_depth(keys, prefix)
    if expected is None:
        return found
    if expected not in DEPTH_LAYOUTS:
        raise CheckpointError(f"unsupported --{role}-depth {expected}; choose one of "
                              f"{sorted(DEPTH_LAYOUTS)}")
    if found != expected:
        raise CheckpointError(f"{role} {path!r} is {_layout_text(keys, prefix)}, not the "
                              f"ResNet-{expected} that --{role}-depth {expected} asks for; "
                              f"{hint}")
    return found


def _sample(keys: Sequence[str], n: int = 2) -> str:
    keys = sorted(keys)
    return ", ".join(repr(k) for k in keys[:n]) + (", ..." if len(keys) > n else "")


def validate_teacher(sd: Mapping[str, Any], path, depth: Optional[int] = None) -> Optional[int]:
    """Check that ``sd`` is a Detectron2 RetinaNet; return its backbone depth (or None)."""
    path = str(path)
    keys = list(sd)
    if any(k.startswith((TEACHER_PREFIX, STUDENT_PREFIX)) for k in keys):
        raise CheckpointError(f"teacher {path!r} is already a distillation checkpoint "
                              "(t_net./s_net. keys); extract the teacher first with "
                              "scripts/convert-output-to-d2.py IN OUT --eval-teacher")
    if resnet_layout(keys) is not None or any(k.startswith("layer1.") for k in keys):
        raise CheckpointError(f"teacher {path!r} is a bare ResNet backbone, not a RetinaNet; "
                              "pass the base training's output (e.g. model_final.pth of "
                              "`make base DEPTH=50`)")
    has_backbone = any(k.startswith(D2_BACKBONE_PREFIX) for k in keys)
    has_head = any(k.startswith("head.") for k in keys)
    if not (has_backbone and has_head):
        missing = " and ".join(n for n, ok in (("backbone.bottom_up.*", has_backbone),
                                                ("head.*", has_head)) if not ok)
        raise CheckpointError(f"teacher {path!r} does not look like a Detectron2 RetinaNet "
                              f"(no {missing} keys; it has e.g. {_sample(keys)}); pass the "
                              "base RetinaNet training's checkpoint")
    if resnet_layout(keys, D2_BACKBONE_PREFIX) is None:
        raise CheckpointError(f"teacher {path!r} has no ResNet stages under "
                              "backbone.bottom_up.res2-5; pass a RetinaNet with a ResNet "
                              "backbone")
    return _check_depth(keys, D2_BACKBONE_PREFIX, depth, "teacher", path,
                        "pass the base training output of that depth (make base DEPTH=...)")


def validate_student(sd: Mapping[str, Any], path, depth: Optional[int] = None) -> Optional[int]:
    """Check that ``sd`` is a torchvision-converted bare ResNet; return its depth (or None)."""
    path = str(path)
    keys = list(sd)
    if any(k.startswith((TEACHER_PREFIX, STUDENT_PREFIX)) for k in keys):
        raise CheckpointError(f"student {path!r} is a distillation checkpoint (t_net./s_net. "
                              "keys), not a backbone; pass the converted torchvision ResNet "
                              "(e.g. r-18.pkl)")
    if any(k.startswith(("backbone.", "head.", "proposal_generator.", "roi_heads."))
           for k in keys):
        raise CheckpointError(f"student {path!r} is a whole detector (backbone./head. keys), "
                              "not a bare backbone; pass the torchvision ResNet converted by "
                              "detectron2/tools/convert-torchvision-to-d2.py (e.g. r-18.pkl)")
    if any(k.startswith(("layer1.", "layer2.")) for k in keys):
        raise CheckpointError(f"student {path!r} is an unconverted torchvision state dict "
                              "(layer1.* keys); convert it first with "
                              "detectron2/tools/convert-torchvision-to-d2.py IN.pth OUT.pkl")
    if not any(k.startswith("stem.") for k in keys) or resnet_layout(keys) is None:
        raise CheckpointError(f"student {path!r} is not a converted ResNet backbone (expected "
                              f"stem.* and res2.*-res5.* keys, found e.g. {_sample(keys)}); "
                              "pass the output of convert-torchvision-to-d2.py")
    return _check_depth(keys, "", depth, "student", path,
                        "pass the converted torchvision weights of that depth")


def merge_teacher_student(teacher: Mapping[str, Any], student: Mapping[str, Any]
                          ) -> Dict[str, "np.ndarray"]:
    """``t_net.<teacher key>`` and ``s_net.backbone.bottom_up.<student key>``, as numpy."""
    merged: Dict[str, Any] = {}
    for key, value in teacher.items():
        merged[TEACHER_PREFIX + key] = to_numpy(value)
    for key, value in student.items():
        merged[STUDENT_BACKBONE_PREFIX + key] = to_numpy(value)
    return merged


def split_distilled(sd: Mapping[str, Any], path="checkpoint", eval_teacher: bool = False
                    ) -> Tuple[Dict[str, "np.ndarray"], Dict[str, int]]:
    """Keep ``s_net.*`` (or ``t_net.*``) keys without the prefix, values as numpy.

    Returns (kept, dropped counts by group).
    """
    prefix = TEACHER_PREFIX if eval_teacher else STUDENT_PREFIX
    kept = {k[len(prefix):]: to_numpy(v) for k, v in sd.items() if k.startswith(prefix)}
    if not kept:
        role = "teacher (t_net.*)" if eval_teacher else "student (s_net.*)"
        other = STUDENT_PREFIX if eval_teacher else TEACHER_PREFIX
        if any(k.startswith(other) for k in sd):
            hint = ("drop --eval-teacher to extract the student" if eval_teacher
                    else "it holds only t_net.* keys; add --eval-teacher for the teacher")
        else:
            hint = ("it is not an MGD distillation checkpoint (keys like "
                    f"{_sample(list(sd))}); pass a checkpoint written by the MGD training")
        raise CheckpointError(f"{str(path)!r} has no {role} keys; {hint}")
    dropped: Dict[str, int] = collections.Counter()
    for k in sd:
        if not k.startswith(prefix):
            group = k.split(".", 1)[0] + "." if "." in k else k
            dropped[group] += 1
    return kept, dict(dropped)


def convert_distilled(src, dst, eval_teacher: bool = False) -> str:
    """Split one distillation checkpoint into a Detectron2 pickle; return a summary line."""
    check_output_path(dst, inputs=[src])
    sd = load_checkpoint(src, what="checkpoint")
    kept, dropped = split_distilled(sd, src, eval_teacher=eval_teacher)
    size = save_d2_pickle(kept, dst)
    prefix = TEACHER_PREFIX if eval_teacher else STUDENT_PREFIX
    role = "teacher" if eval_teacher else "student"
    others = ", ".join(f"{g}* {n}" for g, n in sorted(dropped.items())) or "nothing"
    return (f"{src} -> {dst}: {len(kept)} {role} tensors ({prefix}* without the prefix), "
            f"{human_size(size)}; left out {others}")


# --------------------------------------------------------------------------------------
# CLI plumbing
# --------------------------------------------------------------------------------------

class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but usage errors are one ``error:`` line on stderr and exit code 2."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"error: {message}; run {self.prog} --help for usage\n")


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; a CheckpointError becomes ``error: <message>`` and exit code 2."""
    try:
        return int(main(argv) or 0)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GB"
