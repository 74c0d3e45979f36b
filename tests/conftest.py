"""Test session setup: find the pinned Detectron2 checkout, skip its tests cleanly without it.

Tests that need Detectron2 carry ``@pytest.mark.detectron2``. They run when ``detectron2/`` holds
the built pinned checkout (``make detectron2``) with the overlay copied in (``make overlay``);
otherwise they are skipped with a one-line reason. Everything else runs anywhere.
"""
import filecmp
import importlib.util
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = REPO_ROOT / "detectron2"
OVERLAY_DIRS = ("modeling/backbone", "modeling/meta_arch", "engine", "data")


def _detectron2_unavailable_reason() -> str:
    """Empty string when the pinned Detectron2 can be imported, else why not (one line)."""
    # The repository root is on sys.path, where `detectron2/` (the checkout) would otherwise be
    # imported as an empty namespace package: put the checkout itself first when it is built.
    if list((CHECKOUT / "detectron2").glob("_C*.so")):
        if str(CHECKOUT) not in sys.path:
            sys.path.insert(0, str(CHECKOUT))
    else:
        spec = importlib.util.find_spec("detectron2")
        if spec is None or spec.origin is None:  # absent, or only the empty checkout folder
            return "pinned Detectron2 not built here (run `make detectron2`)"
    try:
        import detectron2._C  # noqa: F401  (the compiled ops prove the build finished)
    except ImportError as error:
        return f"Detectron2 does not import: {error}"
    stale = [
        str(src.relative_to(REPO_ROOT))
        for sub in OVERLAY_DIRS
        for src in sorted((REPO_ROOT / "d2" / sub).glob("*.py"))
        if not (CHECKOUT / "detectron2" / sub / src.name).exists()
        or not filecmp.cmp(src, CHECKOUT / "detectron2" / sub / src.name, shallow=False)
    ]
    if stale:
        pytest.exit(f"overlay out of date ({', '.join(stale)}): run `make overlay`", returncode=3)
    return ""


DETECTRON2_SKIP_REASON = _detectron2_unavailable_reason()


def pytest_report_header(config):
    return f"detectron2: {DETECTRON2_SKIP_REASON or 'pinned checkout available'}"


def pytest_collection_modifyitems(config, items):
    if not DETECTRON2_SKIP_REASON:
        return
    skip = pytest.mark.skip(reason=DETECTRON2_SKIP_REASON)
    for item in items:
        if "detectron2" in item.keywords:
            item.add_marker(skip)
