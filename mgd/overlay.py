"""The overlay: this repository's Detectron2 modules and configs, copied into the checkout.

``d2/X/y.py`` is copied to ``<checkout>/detectron2/X/y.py`` (the overlay modules import each
other as ``detectron2.X.y``, so the code that runs is the copy) and ``configs/*.yaml`` to
``<checkout>/configs/COCO-Detection/`` (where their ``_BASE_`` resolves). The copy step is the
layout this reproduction mirrors (the MGD authors' modules inside Detectron2's package).

Each copy is read-only and starts with one comment line naming its source and the digest of the
content it was given (:data:`HEADER`; the copy's line N is the source's line N - 1). "Go to
definition" in an editor leads into the copy, so an edit made there is never overwritten: a copy
whose content no longer matches its own digest stops the refresh with an :class:`OverlayError`
naming both files.

:func:`refresh_overlay` makes sure a stale copy never runs: every entry point that imports the
overlay (``train_net.py``, the scripts, the benchmarks, the tests) calls it through
:func:`mgd.bootstrap.use_detectron2_with_overlay`; ``make overlay`` calls :func:`copy_overlay`.

Only files are compared and copied here: nothing of Detectron2 is imported.
"""
import hashlib
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Tuple

from .errors import UserError

__all__ = ["OVERLAY_FOLDERS", "HEADER", "OverlayError", "overlay_files", "overlay_modules", "copy_content",
           "stale_files", "copy_overlay", "refresh_overlay"]

#: the first line of every copy: its source (relative to the repository) and its body's digest
HEADER = "# Copy of {source} by `make overlay` (sha256 {digest}): edit that file; this copy is read-only.\n"
_HEADER_RE = re.compile(r"# Copy of (?P<source>\S+) by `make overlay` \(sha256 (?P<digest>[0-9a-f]{16})\)")
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


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


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def copy_content(source: Path, repo_root) -> bytes:
    """What the copy of ``source`` holds: :data:`HEADER`, then the source's bytes."""
    body = Path(source).read_bytes()
    name = Path(source).resolve().relative_to(Path(repo_root).resolve()).as_posix()
    return HEADER.format(source=name, digest=_digest(body)).encode() + body


def _edited_copy(src: Path, dst: Path, repo_root) -> Optional[str]:
    """Why ``dst`` must not be overwritten (edited since it was copied, or not a copy made
    here), else None."""
    content = dst.read_bytes()
    header, _, body = content.partition(b"\n")
    found = _HEADER_RE.match(header.decode("utf-8", "replace"))
    repo = Path(repo_root).resolve()
    source = src.relative_to(repo)
    if found and found["digest"] == _digest(body):
        return None
    if not found and content == src.read_bytes():  # a copy made before copies had a header
        return None
    what = "was edited after `make overlay` copied it" if found else "is not a copy made by `make overlay`"
    return (f"{dst} {what} from {source}: its edit would be lost; move the edit into {repo / source} "
            f"(the source), then delete {dst} and run `make overlay`")


def stale_files(repo_root: str, checkout: str) -> List[Tuple[Path, Path]]:
    """The pairs of :func:`overlay_files` whose copy is missing or does not hold what
    :func:`copy_content` gives."""
    return [(src, dst) for src, dst in overlay_files(repo_root, checkout)
            if not dst.is_file() or dst.read_bytes() != copy_content(src, repo_root)]


def _write_atomically(content: bytes, dst: Path) -> None:
    """Write ``content`` to ``dst`` (read-only) through a temporary file in ``dst``'s folder,
    then rename: a process importing ``dst`` meanwhile sees the old or the new file, never half
    of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.chmod(tmp, _READ_ONLY)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def copy_overlay(repo_root: str, checkout: str) -> List[Tuple[Path, Path]]:
    """Copy every stale overlay file into ``checkout``; returns the pairs copied. Nothing is
    copied when a copy was edited there (every copy is checked first).

    Raises:
        OverlayError: the checkout has no ``detectron2/`` package, a copy was edited in the
            checkout, or a copy cannot be written.
    """
    if not (Path(checkout) / "detectron2").is_dir():
        raise OverlayError(f"{checkout} holds no Detectron2 package (detectron2/); run `make detectron2` first")
    stale = stale_files(repo_root, checkout)
    for src, dst in stale:
        why = dst.is_file() and _edited_copy(src, dst, repo_root)
        if why:
            raise OverlayError(why)
    copied = []
    for src, dst in stale:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(copy_content(src, repo_root), dst)
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
