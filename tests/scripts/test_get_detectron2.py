"""scripts/get_detectron2.sh never mixes versions: run for real on a fake upstream repository of
two commits, whose setup.py "builds" a _C*.so that records the commit it was built from."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "get_detectron2.sh"

FAKE_SETUP = """
import os, pathlib, subprocess
head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
pathlib.Path("detectron2/_C.fake.so").write_text(head)
# what the script calls after a build: a module that answers, or one that crashes as a build
# against a mismatched C++ runtime did
crash = {"segv": "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
         "import": "raise ImportError('no module named fvcore')"}.get(os.environ.get("FAKE_CALL"), "pass")
pathlib.Path("detectron2/_C.py").write_text(
    f"def get_compiler_version():\\n    {crash}\\n    return 'GCC'\\n"
    "def get_cuda_version():\\n    return 'not available'\\n")
"""


def _git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}).stdout.strip()


@pytest.fixture
def upstream(tmp_path):
    """A git repository with the files the compatibility edits touch, and two commits."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    _git(repo, "init", "-q")
    listed = subprocess.run([sys.executable, REPO / "scripts" / "patch_detectron2.py", "--list"],
                            capture_output=True, text=True, check=True).stdout.split()
    (repo / "detectron2").mkdir()
    (repo / "detectron2" / "__init__.py").write_text("")
    for path in listed:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("x = Image.LINEAR\n" if path.endswith("transform.py") else "x = 1\n")
    (repo / "setup.py").write_text(FAKE_SETUP)
    (repo / "README").write_text("first\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "first")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "README").write_text("second\n")
    _git(repo, "commit", "-qam", "second")
    return repo, first, _git(repo, "rev-parse", "HEAD")


def _get(dest, repo, commit, **env):
    return subprocess.run(["bash", SCRIPT, dest, repo, commit], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "FORCE_CUDA": "0",
                               "HOME": str(dest.parent), **env}, timeout=300)


def _built_from(dest) -> str:
    return (dest / "detectron2" / "_C.fake.so").read_text()


def test_another_commit_is_checked_out_and_rebuilt_from_scratch(upstream, tmp_path):
    repo, first, second = upstream
    dest = tmp_path / "checkout"
    proc = _get(dest, repo, first)
    assert proc.returncode == 0, proc.stderr
    assert _built_from(dest) == first
    assert "Image.BILINEAR" in (dest / "detectron2/data/transforms/transform.py").read_text()  # patched
    again = _get(dest, repo, first)  # a no-op: nothing rebuilt
    assert again.returncode == 0 and "building" not in again.stdout, again.stdout

    proc = _get(dest, repo, second)
    assert proc.returncode == 0, proc.stderr
    assert f"is at {first[:12]}: moving it to {second[:12]} and rebuilding from scratch" in proc.stdout
    assert _built_from(dest) == second  # never the first commit's build
    assert _git(dest, "rev-parse", "HEAD") == second


def test_a_build_not_known_to_be_this_commits_is_rebuilt(upstream, tmp_path):
    repo, first, _ = upstream
    dest = tmp_path / "checkout"
    assert _get(dest, repo, first).returncode == 0
    (dest / "build" / "mgd-build-commit.txt").unlink()  # e.g. built by hand
    (dest / "detectron2" / "_C.fake.so").write_text("stale")
    proc = _get(dest, repo, first)
    assert proc.returncode == 0, proc.stderr
    assert "rebuilding: the existing _C*.so was not built from" in proc.stdout
    assert _built_from(dest) == first


def test_a_checkout_with_changes_of_its_own_is_refused(upstream, tmp_path):
    repo, first, second = upstream
    dest = tmp_path / "checkout"
    assert _get(dest, repo, first).returncode == 0
    (dest / "README").write_text("my own work\n")
    proc = _get(dest, repo, second)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "changes of its own (README)" in lines[0]
    assert _git(dest, "rev-parse", "HEAD") == first and (dest / "README").read_text() == "my own work\n"
    assert _built_from(dest) == first


def test_an_unreachable_repository_exits_3(tmp_path):
    proc = _get(tmp_path / "checkout", tmp_path / "no-such-repo", "0" * 40)
    assert proc.returncode == 3
    assert proc.stderr.startswith("error: cannot clone ") and not (tmp_path / "checkout").exists()


def test_a_build_that_crashes_when_called_is_refused_and_not_kept(upstream, tmp_path):
    repo, first, _ = upstream
    dest = tmp_path / "checkout"
    proc = _get(dest, repo, first, FAKE_CALL="segv", CXX="/opt/gcc/bin/g++")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the extension just built crashes when called "
                                                   "(signal 11; built with CXX=/opt/gcc/bin/g++)"), lines
    assert "CC=/usr/bin/gcc CXX=/usr/bin/g++ make detectron2" in lines[0]
    assert not list((dest / "detectron2").glob("_C*.so"))  # never kept
    proc = _get(dest, repo, first)  # the next run builds again (with a compiler that works)
    assert proc.returncode == 0 and "building the C++ extension" in proc.stdout, proc.stdout + proc.stderr
    assert _built_from(dest) == first


def test_a_module_that_cannot_be_called_for_another_reason_is_kept_with_a_warning(upstream, tmp_path):
    repo, first, _ = upstream
    dest = tmp_path / "checkout"
    proc = _get(dest, repo, first, FAKE_CALL="import")  # e.g. a package Detectron2 imports is missing
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: could not call the new module to check it (exit 1; see " in proc.stdout
    assert "no module named fvcore" in (dest / "build-check.log").read_text()
    assert _built_from(dest) == first  # the build is kept: not its fault
