"""tests/conftest.py, run for real (pytest in a subprocess) on a throwaway checkout-like tree: a
copy of conftest.py beside a fake ``detectron2`` checkout. A built pin whose modules do not
import, or any Detectron2 test that skips while the pin is built, fails the session with the
reason in its output; without a built pin the same tests skip and the session passes."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
PACKAGES = ("config", "checkpoint", "structures", "modeling", "engine", "data", "evaluation", "utils")

SAMPLE_TESTS = '''
import pytest


def test_plain():
    pass


@pytest.mark.detectron2
def test_needs_detectron2():
    import detectron2.modeling  # noqa: F401


@pytest.mark.detectron2
@pytest.mark.gpu
def test_needs_a_gpu():
    pytest.skip("no CUDA device here")


@pytest.mark.detectron2
@pytest.mark.xfail(reason="a known failure, not a skip", strict=True)
def test_known_failure():
    assert False
'''


def make_tree(root: Path, built: bool = True, broken: str = "", extra_test: str = "") -> Path:
    """root/tests/conftest.py (the real one), root/detectron2/detectron2 (a fake pin)."""
    (root / "tests").mkdir(parents=True)
    shutil.copy(CONFTEST, root / "tests" / "conftest.py")
    (root / "mgd").mkdir()  # conftest finds the checkout through mgd.bootstrap
    (root / "mgd" / "__init__.py").write_text("")
    for name in ("bootstrap.py", "overlay.py", "errors.py"):
        shutil.copy(CONFTEST.parents[1] / "mgd" / name, root / "mgd" / name)
    (root / "tests" / "test_sample.py").write_text(SAMPLE_TESTS)
    if extra_test:
        (root / "tests" / "test_extra.py").write_text(textwrap.dedent(extra_test))
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = tests\npythonpath = .\n"
                                     "markers =\n    detectron2: needs the pin\n")
    package = root / "detectron2" / "detectron2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_C.py").write_text("")  # the compiled ops, as far as `import detectron2._C` goes
    if built:
        (package / "_C.fake.so").write_text("")  # what conftest looks for to know the pin is built
    for name in PACKAGES:
        (package / name).mkdir()
        body = f"raise ImportError('broken on purpose: {name}')\n" if name == broken else ""
        (package / name / "__init__.py").write_text(body)
    (package / "utils" / "events.py").write_text("")
    return root


def run_pytest(root: Path, workers: int = 0) -> subprocess.CompletedProcess:
    """pytest in ``root``; with ``workers`` > 0, in that many pytest-xdist processes as `make test`
    runs it (the hooks that guard skips then see the reports in the controlling process)."""
    # the fake tree's own detectron2/, whatever checkout this session tests
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MGD_DETECTRON2_DIR")}
    parallel = ["-n", str(workers), "--dist", "loadscope"] if workers else []
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *parallel],
                          cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


#: run each guard test in one pytest process and in two xdist workers (what `make test` does)
WORKERS = pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "xdist"])


@WORKERS
def test_a_built_pin_that_imports_passes(tmp_path, workers):
    proc = run_pytest(make_tree(tmp_path), workers)
    assert proc.returncode == 0, proc.stdout
    assert "2 passed, 1 skipped, 1 xfailed" in proc.stdout  # the GPU skip and the xfail are expected


@pytest.mark.parametrize("broken, workers", [("modeling", 0), ("engine", 0), ("data", 2), ("evaluation", 0)])
def test_a_built_pin_that_breaks_on_import_fails_the_session(tmp_path, broken, workers):
    proc = run_pytest(make_tree(tmp_path, broken=broken), workers)
    assert proc.returncode == 1, proc.stdout
    assert f"cause: `import detectron2.{broken}` fails: ImportError: broken on purpose: {broken}" in proc.stdout
    assert "tests/test_sample.py::test_needs_detectron2" in proc.stdout
    assert "the session fails" in proc.stdout


@WORKERS
def test_a_skip_inside_a_detectron2_test_fails_the_session_when_built(tmp_path, workers):
    extra = '''
        import pytest

        pytestmark = pytest.mark.detectron2
        pytest.importorskip("detectron2.no_such_module", reason="a module-level skip")


        def test_never_collected():
            pass
    '''
    proc = run_pytest(make_tree(tmp_path, extra_test=extra), workers)
    assert proc.returncode == 1, proc.stdout
    assert "tests/test_extra.py (whole module): a module-level skip" in proc.stdout


@WORKERS
def test_a_skip_at_run_time_fails_the_session_when_built(tmp_path, workers):
    extra = '''
        import pytest


        @pytest.mark.detectron2
        def test_skips():
            pytest.skip("a skip inside the test")
    '''
    proc = run_pytest(make_tree(tmp_path, extra_test=extra), workers)
    assert proc.returncode == 1, proc.stdout
    assert "tests/test_extra.py::test_skips: a skip inside the test" in proc.stdout


@WORKERS
def test_without_a_built_pin_the_detectron2_tests_skip_and_pass(tmp_path, workers):
    proc = run_pytest(make_tree(tmp_path, built=False, broken="modeling"), workers)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 3 skipped" in proc.stdout
    assert "Detectron2 not built at " in proc.stdout


OVERLAY_MODULE = "WHICH = {!r}\n"


def make_stale_overlay(root: Path) -> Path:
    """d2/engine/mgd_sample.py in the tree, an older copy of it in the fake checkout, and a test
    that reads the copy; returns the copy."""
    from mgd.overlay import copy_content

    (root / "d2" / "engine").mkdir(parents=True)
    source = root / "d2" / "engine" / "mgd_sample.py"
    source.write_text(OVERLAY_MODULE.format("old"))
    copy = root / "detectron2" / "detectron2" / "engine" / "mgd_sample.py"
    copy.write_bytes(copy_content(source, root))  # what `make overlay` copied before the edit
    source.write_text(OVERLAY_MODULE.format("new"))
    (root / "tests" / "test_overlay_sample.py").write_text(textwrap.dedent('''
        import pytest


        @pytest.mark.detectron2
        def test_the_copy_is_the_new_code():
            from detectron2.engine.mgd_sample import WHICH
            assert WHICH == "new"
    '''))
    return copy


def test_a_stale_overlay_is_refreshed_and_said(tmp_path):
    root = make_tree(tmp_path)
    copy = make_stale_overlay(root)
    proc = run_pytest(root)
    assert proc.returncode == 0, proc.stdout
    assert "overlay: d2/engine/mgd_sample.py changed; refreshed the copy in" in proc.stdout
    assert copy.read_text().split("\n", 1)[1] == OVERLAY_MODULE.format("new")  # after its header line


def test_a_stale_overlay_that_cannot_be_refreshed_ends_the_session_in_one_line(tmp_path):
    root = make_tree(tmp_path)
    copy = make_stale_overlay(root)
    copy.unlink()
    (copy / "in-the-way").mkdir(parents=True)  # a folder where the copy goes: no write can replace it (even as root)
    proc = run_pytest(root)
    assert proc.returncode == 3, proc.stdout
    assert "error: cannot copy d2/engine/mgd_sample.py into" in proc.stdout
    assert "passed" not in proc.stdout and "Traceback" not in proc.stdout
