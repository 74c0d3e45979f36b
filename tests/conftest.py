"""Test session setup: find the Detectron2 checkout under test; skip its tests without it, and
never let a skip hide a broken build.

The checkout is the one ``make`` names (``DETECTRON2=pin``: ``detectron2/``; ``latest``:
``detectron2-latest/``; or ``DETECTRON2_DIR``), passed as ``MGD_DETECTRON2_DIR``; without it,
``detectron2/`` (:mod:`mgd.bootstrap`).

Tests that need Detectron2 carry ``@pytest.mark.detectron2``. Without a built checkout
(``detectron2/detectron2/_C*.so`` absent) they are skipped with a one-line reason and the
session can pass. With a built checkout, the session imports what the integration tests use
(``REQUIRED_MODULES`` and every overlay module, from the checkout) after refreshing a stale copy
of the overlay (:mod:`mgd.overlay`; one line in the header, or the session ends with one line
when the checkout cannot be written); then any ``detectron2`` test that skips, for whatever reason (a failed import here, an
``importorskip`` in a module), fails the session, each skip listed with its reason. Tests that
need a CUDA GPU also carry ``@pytest.mark.gpu``: their skips where there is none are expected.
"""
import importlib
import importlib.util
from pathlib import Path
from typing import List

import pytest

from mgd.bootstrap import describe_detectron2, detectron2_checkout, use_detectron2_with_overlay
from mgd.overlay import OverlayError, overlay_modules

#: the repository (pytest.ini's ``pythonpath`` puts it and tests/ on sys.path)
REPO_ROOT = Path(__file__).resolve().parents[1]

#: the checkout under test: DETECTRON2=pin (detectron2/), latest (detectron2-latest/) or DETECTRON2_DIR
CHECKOUT = Path(detectron2_checkout(str(REPO_ROOT)))
#: what the integration tests import from the pin (the overlay's modules are added to these)
REQUIRED_MODULES = (
    "detectron2._C", "detectron2.config", "detectron2.checkpoint", "detectron2.structures",
    "detectron2.modeling", "detectron2.engine", "detectron2.data", "detectron2.evaluation",
    "detectron2.utils.events",
)
BUILT = bool(list((CHECKOUT / "detectron2").glob("_C*.so")))


#: the line saying which overlay files were refreshed in the checkout (shown at the session's start)
_REFRESHED: List[str] = []
#: why the stale overlay could not be refreshed (the session then ends with this one line)
_OVERLAY_ERROR: List[str] = []


def _detectron2_unavailable_reason() -> str:
    """Empty string when the Detectron2 under test and the overlay import, else why not (one line)."""
    # The repository root is on sys.path, where `detectron2/` (the checkout) would otherwise be
    # imported as an empty namespace package: the checkout itself goes first when it is built,
    # its copy of the overlay refreshed from d2/ (the code under test is the repository's).
    if BUILT:
        try:
            use_detectron2_with_overlay(str(REPO_ROOT), exit_on_error=False, say=_REFRESHED.append)
        except OverlayError as error:  # the session ends at its start (pytest_sessionstart)
            _OVERLAY_ERROR.append(f"error: {error}")
            return _OVERLAY_ERROR[0]
    else:
        spec = importlib.util.find_spec("detectron2")
        if spec is None or spec.origin is None:  # absent, or only the empty checkout folder
            return f"Detectron2 not built at {CHECKOUT} (run `make detectron2`)"
    for name in (*REQUIRED_MODULES, *overlay_modules(str(REPO_ROOT))):
        try:
            importlib.import_module(name)
        except Exception as error:  # an ImportError, or any error raised while importing
            return f"`import {name}` fails: {type(error).__name__}: {error}".splitlines()[0]
    return ""


DETECTRON2_SKIP_REASON = _detectron2_unavailable_reason()
#: "node id: reason" of each skip that would hide a broken build (a detectron2 test, not gpu)
_HIDDEN_SKIPS: List[str] = []


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (its skips without one are expected)")


def pytest_report_header(config):
    if DETECTRON2_SKIP_REASON:
        return f"detectron2: {DETECTRON2_SKIP_REASON}"
    return describe_detectron2(str(REPO_ROOT), str(CHECKOUT / "detectron2"))


def pytest_sessionstart(session):
    if _OVERLAY_ERROR:
        pytest.exit(_OVERLAY_ERROR[0], returncode=3)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in _REFRESHED:  # shown even with -q: the copy under test changed
        reporter.write_line(line) if reporter else print(line)


def pytest_collection_modifyitems(config, items):
    if not DETECTRON2_SKIP_REASON:
        return
    skip = pytest.mark.skip(reason=DETECTRON2_SKIP_REASON)
    for item in items:
        if "detectron2" in item.keywords:
            item.add_marker(skip)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr).splitlines()[-1] if longrepr else "?"


def pytest_collectreport(report):
    # a whole module skipped at import (module-level importorskip): every such module here is
    # a Detectron2 one
    if BUILT and report.skipped:
        _HIDDEN_SKIPS.append(f"{report.nodeid} (whole module): {_skip_reason(report)}")


def pytest_runtest_logreport(report):
    # The report's own keywords (its markers among them) say whether the test is guarded: with
    # pytest-xdist this hook runs in the controlling process, which never collects the tests.
    # (An expected failure, xfail, is reported as skipped too: not a skip.)
    guarded = "detectron2" in report.keywords and "gpu" not in report.keywords
    if BUILT and report.skipped and guarded and not hasattr(report, "wasxfail"):
        _HIDDEN_SKIPS.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_sessionfinish(session, exitstatus):
    if _HIDDEN_SKIPS and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _HIDDEN_SKIPS:
        return
    terminalreporter.section("skips that would hide a broken Detectron2", sep="=", red=True, bold=True)
    terminalreporter.write_line(
        f"error: Detectron2 is built ({CHECKOUT}/detectron2/_C*.so), yet {len(_HIDDEN_SKIPS)} "
        "Detectron2 test(s) or module(s) skipped; the session fails. Fix the cause (rebuild with "
        "`make detectron2`, `make overlay`), or mark a GPU-only test `gpu`:")
    if DETECTRON2_SKIP_REASON:
        terminalreporter.write_line(f"  cause: {DETECTRON2_SKIP_REASON}")
    for line in _HIDDEN_SKIPS:
        terminalreporter.write_line(f"  {line}")
