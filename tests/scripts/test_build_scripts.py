"""The build helpers: cuda_build_env.py (what `make detectron2` builds for), run_detectron2_tests.py
(`make test-detectron2`'s comparison with the expected failures), check_cuda_build.py."""
import os
import random
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy
import pytest
import torch

from d2_support import CHECKOUT, REPO
from scripts_support import load_file

SCRIPTS = REPO / "scripts"


def _run(script, *args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _exports(stdout: str) -> dict:
    """{NAME: value} of the `export NAME=value` lines, parsed as the shell would."""
    env = {}
    for line in stdout.splitlines():
        assert line.startswith("export "), line
        name, _, value = line[len("export "):].partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


# ---------------------------------------------------------------- cuda_build_env.py

def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("FORCE_CUDA", "CUDA_HOME", "CUDA_PATH", "TORCH_CUDA_ARCH_LIST", "CPATH", "LIBRARY_PATH")}
    env.update(extra)
    return env


def _fake_toolkit(root: Path, release: str) -> Path:
    """A toolkit with nvcc and the runtime headers only: no cuBLAS/cuSPARSE headers, no libcudart.so."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.0'\n")
    nvcc.chmod(0o755)
    (root / "include").mkdir()
    for header in ("cuda.h", "cuda_runtime_api.h"):
        (root / "include" / header).write_text("")
    return root


def test_cpu_only_where_torch_sees_no_gpu_or_force_cuda_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the default is a CUDA build")
    for extra in ({}, {"FORCE_CUDA": "0"}):
        proc = _run("cuda_build_env.py", tmp_path / "link", env=_clean_env(**extra))
        assert proc.returncode == 0, proc.stderr
        env = _exports(proc.stdout)
        assert env["MGD_BUILD_TARGET"].startswith("CPU only") and env["FORCE_CUDA"] == "0"
        assert "CUDA_HOME" not in env and not (tmp_path / "link").exists()


def _pip_cuda_roots():
    try:
        import nvidia
    except ImportError:
        return []
    return [p for root in nvidia.__path__ for p in Path(root).iterdir() if p.is_dir()]


@pytest.mark.skipif(torch.version.cuda is None, reason="torch here is a CPU-only build")
def test_force_cuda_fills_a_bare_toolkit_from_the_pip_wheels(tmp_path):
    major = torch.version.cuda.split(".")[0]
    cudart = [r / "lib" / f"libcudart.so.{major}" for r in _pip_cuda_roots() if (r / "lib" / f"libcudart.so.{major}").is_file()]
    sparse = [r / "include" for r in _pip_cuda_roots() if (r / "include" / "cusparse.h").is_file()]
    if not cudart or not sparse:
        pytest.skip("the nvidia pip wheels (cudart, cuSPARSE headers) are not installed here")
    home = _fake_toolkit(tmp_path / "cuda", f"{major}.0")
    link_dir = tmp_path / "build" / "link"
    proc = _run("cuda_build_env.py", link_dir,
                env=_clean_env(FORCE_CUDA="1", CUDA_HOME=str(home), TORCH_CUDA_ARCH_LIST="9.0"))
    assert proc.returncode == 0, proc.stderr
    env = _exports(proc.stdout)
    assert env["FORCE_CUDA"] == "1" and env["CUDA_HOME"] == str(home) and env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert env["MGD_BUILD_TARGET"].startswith(f"CUDA {major}.0 archs 9.0 + CPU ops (")
    assert "\n" not in env["MGD_BUILD_TARGET"]
    assert str(sparse[0]) in env["CPATH"].split(os.pathsep)
    assert env["LIBRARY_PATH"].split(os.pathsep)[0] == str(link_dir)
    link = link_dir / "libcudart.so"
    assert link.is_symlink() and link.resolve() == cudart[0].resolve()  # a link in the build dir, no copy


@pytest.mark.skipif(torch.version.cuda is None, reason="torch here is a CPU-only build")
def test_force_cuda_refuses_an_nvcc_of_another_cuda_major(tmp_path):
    other = int(torch.version.cuda.split(".")[0]) - 1
    home = _fake_toolkit(tmp_path / "cuda", f"{other}.4")
    proc = _run("cuda_build_env.py", tmp_path / "link", env=_clean_env(FORCE_CUDA="1", CUDA_HOME=str(home)))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: nvcc in {home} is CUDA {other}.4 but torch")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_force_cuda_with_a_toolkit_path_without_nvcc_is_one_line(tmp_path):
    proc = _run("cuda_build_env.py", tmp_path / "link", env=_clean_env(FORCE_CUDA="1", CUDA_HOME=str(tmp_path)))
    if torch.version.cuda is None:
        assert "CPU-only build" in proc.stderr
    else:
        assert f"CUDA_HOME={tmp_path} has no bin/nvcc" in proc.stderr
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- run_detectron2_tests.py

FAKE_TESTS = {
    "tests/__init__.py": "",
    "tests/test_top.py": """
        import pytest

        def test_passes():
            pass

        def test_fails():
            assert False

        @pytest.mark.skip(reason="needs CUDA")
        def test_skipped():
            pass
    """,
    "tests/test_needs_a_package.py": """
        import a_package_nobody_installed  # noqa: F401  (a module that cannot be collected)

        def test_never_runs():
            pass
    """,
    "tests/sub/__init__.py": "",
    "tests/sub/test_nested.py": """
        import unittest

        class TestNested(unittest.TestCase):
            def test_breaks(self):
                raise KeyError("precision")

            def test_fine(self):
                pass
    """,
}


@pytest.fixture
def fake_checkout(tmp_path):
    root = tmp_path / "checkout"
    for rel, text in FAKE_TESTS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    (root / "setup.cfg").write_text("[metadata]\nname = fake\n")
    return root


def _expect(tmp_path, *lines):
    path = tmp_path / "expected.txt"
    path.write_text("# comment\n\n" + "".join(f"{line}\n" for line in lines))
    return path


def test_expected_failures_only_pass(fake_checkout, tmp_path):
    expected = _expect(tmp_path, "tests/test_top.py::test_fails  a reason",
                       "tests/sub/test_nested.py::TestNested::test_breaks  another reason",
                       "tests/test_needs_a_package.py  imports a package not installed here",
                       "tests/test_top.py::test_skipped  listed, but skipped here: fine")
    proc = _run("run_detectron2_tests.py", fake_checkout, expected)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("detectron2's own tests: 2 passed, 1 skipped, 3 failed (3 expected, listed in")
    assert (fake_checkout / "tests.log").is_file()


def test_an_unexpected_failure_fails_with_its_node_id(fake_checkout, tmp_path):
    proc = _run("run_detectron2_tests.py", fake_checkout, _expect(tmp_path, "tests/test_top.py::test_fails  a reason"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert ("unexpected failures: tests/sub/test_nested.py::TestNested::test_breaks, "
            "tests/test_needs_a_package.py;") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_listed_failure_that_passes_fails_the_check(fake_checkout, tmp_path):
    expected = _expect(tmp_path, "tests/test_top.py::test_fails  r", "tests/sub/test_nested.py::TestNested::test_breaks  r",
                       "tests/test_needs_a_package.py  r", "tests/sub/test_nested.py::TestNested::test_fine  r")
    proc = _run("run_detectron2_tests.py", fake_checkout, expected)
    assert proc.returncode == 1
    assert "listed as expected failures but passed (delete their lines): " \
           "tests/sub/test_nested.py::TestNested::test_fine" in proc.stderr


SEEDED_TESTS = {
    "tests/test_draws.py": """
        import random
        import unittest

        import numpy
        import torch

        def _draws():
            return (random.random(), float(numpy.random.rand()), float(torch.rand(1)))

        def test_first_draw():
            assert _draws() == (REFERENCE)

        class TestLater(unittest.TestCase):
            def test_draws_again_from_the_same_state(self):
                assert _draws() == (REFERENCE)
    """,
}


def test_every_test_starts_from_the_same_random_state(tmp_path):
    """Upstream tests that draw unseeded boxes give the same outcome on every run."""
    random.seed(0)
    numpy.random.seed(0)
    torch.manual_seed(0)
    reference = f"{random.random()!r}, {float(numpy.random.rand())!r}, {float(torch.rand(1))!r}"
    root = tmp_path / "checkout"
    for rel, text in {"tests/__init__.py": "", **SEEDED_TESTS}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).replace("REFERENCE", reference))
    (root / "setup.cfg").write_text("[metadata]\nname = fake\n")
    proc = _run("run_detectron2_tests.py", root, _expect(tmp_path))
    assert proc.returncode == 0, proc.stderr + (root / "tests.log").read_text()
    assert proc.stdout.startswith("detectron2's own tests: 2 passed, 0 skipped, 0 failed")


def test_a_line_without_reason_is_refused(fake_checkout, tmp_path):
    proc = _run("run_detectron2_tests.py", fake_checkout, _expect(tmp_path, "tests/test_top.py::test_fails"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and ":3: expected '<pytest node id or module> <reason>'" in proc.stderr


def test_the_checked_in_list_is_well_formed():
    read_expected = load_file(SCRIPTS / "run_detectron2_tests.py").read_expected
    for version in ("pin", "latest"):
        expected = read_expected(REPO / "tests" / f"detectron2_expected_failures.{version}.txt")
        assert expected and all(node.startswith("tests/") and (".py::" in node or node.endswith(".py"))
                                for node in expected)


# ---------------------------------------------------------------- check_cuda_build.py

@pytest.mark.detectron2
def test_check_cuda_build_agrees_with_the_checkouts_build():
    """A CPU build: every .cu file reported missing; a CUDA build (on GPU machines): passes."""
    checkout = CHECKOUT
    cu_files = len(list((checkout / "detectron2").rglob("*.cu")))  # the pin: 7; today's: 6
    probe = subprocess.run([sys.executable, "-c", "import torch; from detectron2 import _C; print(_C.get_cuda_version())"],
                           cwd=checkout, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    proc = _run("check_cuda_build.py", checkout)
    if probe.stdout.startswith("CUDA"):
        assert proc.returncode == 0 and proc.stdout.startswith(f"CUDA build OK: {cu_files}/{cu_files} .cu files compiled"), proc.stderr
    else:
        assert proc.returncode == 1 and proc.stderr.startswith(f"error: {cu_files} of {cu_files} .cu files were not compiled: ")
