"""The overlay: this repository's Detectron2 modules and configs, copied into the checkout.

``d2/X/y.py`` is copied to ``<checkout>/detectron2/X/y.py`` (the overlay modules import each
other as ``detectron2.X.y``, so the code that runs is the copy) and ``configs/*.yaml`` to
``<checkout>/configs/COCO-Detection/`` (where their ``_BASE_`` resolves). The copy step is the
layout this reproduction mirrors (the MGD authors' modules inside Detectron2's package).

:func:`refresh_overlay` makes sure a stale copy never runs: every entry point that imports the
overlay (``train_net.py``, the scripts, the benchmarks, the tests) calls it through
:func:`mgd.bootstrap.use_detectron2_with_overlay`; ``make overlay`` calls :func:`copy_overlay`.

Only files are compared and copied here: nothing of Detectron2 is imported.
"""
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Tuple

from .errors import UserError

__all__ = ["OVERLAY_FOLDERS", "OverlayError", "overlay_files", "overlay_modules", "stale_files",
           "copy_overlay", "refresh_overlay"]


class OverlayFolder(NamedTuple):
    """One folder of the overlay: files ``pattern`` under ``source`` (relative to the repository,
    searched recursively when ``recursive``) go to ``target`` (relative to the checkout)."""

    source: str
    pattern: str
    target: str
    recursive: bool


#: the overlay's folders, defined here only (the Makefile, train_net.py and the tests use them)
OVERLAY_FOLDERS = (
    OverlayFolder("d2", "*.py", "detectron2", recursive=True),
    OverlayFolder("configs", "*.yaml", os.path.join("configs", "COCO-Detection"), recursive=False),
)


class OverlayError(UserError):
    """The overlay cannot be copied into the checkout (missing checkout, unwritable folder)."""


def overlay_files(repo_root: str, checkout: str) -> List[Tuple[Path, Path]]:
    """(source in the repository, its copy in the checkout) for every overlay file, sorted.
    A folder whose target is absent in the checkout (e.g. an installed Detectron2 has no
    ``configs/``) is left out, except the package itself."""
    repo, out = Path(repo_root).resolve(), Path(checkout).resolve()
    pairs = []
    for folder in OVERLAY_FOLDERS:
        target = out / folder.target
        if folder.target != "detectron2" and not target.is_dir():
            continue
        source = repo / folder.source
        found = source.rglob(folder.pattern) if folder.recursive else source.glob(folder.pattern)
        pairs += [(src, target / src.relative_to(source)) for src in sorted(found) if src.is_file()]
    return pairs


def overlay_modules(repo_root: str) -> List[str]:
    """Module names of the overlay's Python files (``d2/X/y.py`` -> ``detectron2.X.y``)."""
    d2 = Path(repo_root).resolve() / OVERLAY_FOLDERS[0].source
    return ["detectron2." + ".".join(p.relative_to(d2).with_suffix("").parts) for p in sorted(d2.rglob("*.py"))]


def stale_files(repo_root: str, checkout: str) -> List[Tuple[Path, Path]]:
    """The pairs of :func:`overlay_files` whose copy is missing or differs from the source."""
    return [(src, dst) for src, dst in overlay_files(repo_root, checkout)
            if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False)]


def _copy_atomically(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` through a temporary file in ``dst``'s folder, then rename: a
    process importing ``dst`` meanwhile sees the old or the new file, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def copy_overlay(repo_root: str, checkout: str) -> List[Tuple[Path, Path]]:
    """Copy every stale overlay file into ``checkout``; returns the pairs copied.

    Raises:
        OverlayError: the checkout has no ``detectron2/`` package, or a copy cannot be written.
    """
    if not (Path(checkout) / "detectron2").is_dir():
        raise OverlayError(f"{checkout} holds no Detectron2 package (detectron2/); run `make detectron2` first")
    copied = []
    for src, dst in stale_files(repo_root, checkout):
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _copy_atomically(src, dst)
        except OSError as error:
            raise OverlayError(
                f"cannot copy {src.relative_to(Path(repo_root).resolve())} into {dst.parent} "
                f"({error.strerror or error}): make that folder writable, or point MGD_DETECTRON2_DIR "
                "(DETECTRON2_DIR for make) at a checkout you can write to") from None
        copied.append((src, dst))
    return copied


def refresh_overlay(repo_root: str, checkout: str,
                    say: Optional[Callable[[str], None]] = None) -> int:
    """Make the checkout's copy of the overlay match the repository's; returns how many files
    were copied. When it copies, ``say`` gets one line naming them (default: stderr), so a
    run never uses a stale copy silently.

    Raises:
        OverlayError: the copy is stale and cannot be refreshed.
    """
    copied = copy_overlay(repo_root, checkout)
    if copied:
        root = Path(repo_root).resolve()
        names = ", ".join(str(src.relative_to(root)) for src, _ in copied)
        line = f"overlay: {names} changed; refreshed the copy in {Path(checkout).resolve()}"
        (say or (lambda text: print(text, file=sys.stderr, flush=True)))(line)
    return len(copied)
