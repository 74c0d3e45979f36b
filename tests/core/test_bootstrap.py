"""mgd.bootstrap: which Detectron2 checkout a run uses, and the one line that says what it is."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgd import bootstrap

REPO = Path(__file__).resolve().parents[2]


#: make as a user runs it (no variables inherited from a `make test DETECTRON2=...` around us)
MAKE_ENV = {k: v for k, v in os.environ.items()
            if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DETECTRON2", "DETECTRON2_DIR")}


def _make(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", REPO, *args], capture_output=True, text=True,
                          env=MAKE_ENV)


def _make_value(*args) -> str:
    proc = _make(*args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_the_tested_commits_are_the_makefiles():
    commits = bootstrap.tested_commits(str(REPO))
    assert commits == {"pin": _make_value("print-DETECTRON2_COMMIT"),
                       "latest": _make_value("print-DETECTRON2_COMMIT", "DETECTRON2=latest")}
    assert commits["pin"].startswith("369a57d333") and commits["latest"].startswith("02b5c4e295")


def test_each_target_has_its_own_folder():
    assert _make_value("print-DETECTRON2_DIR") == "detectron2"
    assert _make_value("print-DETECTRON2_DIR", "DETECTRON2=latest") == "detectron2-latest"
    proc = _make("print-DETECTRON2_DIR", "DETECTRON2=main")
    assert proc.returncode != 0 and "DETECTRON2 must be pin or latest, got 'main'" in proc.stderr


def _git_repo(path: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": os.environ["PATH"]}
    (path / "detectron2").mkdir(parents=True)
    (path / "detectron2" / "__init__.py").write_text("")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=path, check=True, env=env, capture_output=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True).stdout.strip()


def test_a_checkout_at_another_commit_is_named_untested(tmp_path):
    sha = _git_repo(tmp_path / "mine")
    line = bootstrap.describe_detectron2(str(REPO), str(tmp_path / "mine" / "detectron2"))
    assert line == (f"Detectron2 at {tmp_path / 'mine'}: commit {sha[:12]}: NOT one of the two tested commits "
                    "(latest 02b5c4e295e9, pin 369a57d333ff); expect differences")


def test_an_installed_package_without_git_is_named_unknown(tmp_path):
    (tmp_path / "site" / "detectron2").mkdir(parents=True)
    line = bootstrap.describe_detectron2(str(REPO), str(tmp_path / "site" / "detectron2"))
    assert "commit unknown (not a git checkout): not one of the two tested commits" in line


@pytest.mark.parametrize("name, target", [("detectron2", "pin"), ("detectron2-latest", "latest")])
def test_a_tested_checkout_is_named_so(name, target):
    checkout = REPO / name
    if bootstrap.checkout_commit(str(checkout)) != bootstrap.tested_commits(str(REPO))[target]:
        pytest.skip(f"{name}/ is not checked out at the {target} commit here (`make detectron2 DETECTRON2={target}`)")
    line = bootstrap.describe_detectron2(str(REPO), str(checkout / "detectron2"))
    assert line.endswith(f"tested (DETECTRON2={target})"), line


def test_the_named_checkout_and_its_extra_packages_go_first(tmp_path, monkeypatch):
    checkout = tmp_path / "d2"
    (checkout / "detectron2").mkdir(parents=True)
    (checkout / "mgd-python-deps").mkdir()
    monkeypatch.setenv(bootstrap.CHECKOUT_ENV, str(checkout))
    monkeypatch.setattr(sys, "path", ["/somewhere", str(checkout)])
    assert bootstrap.use_detectron2(str(REPO))
    assert sys.path == [str(checkout), str(checkout / "mgd-python-deps"), "/somewhere"]


def test_without_the_variable_the_repositorys_pin_folder_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv(bootstrap.CHECKOUT_ENV, raising=False)
    assert bootstrap.detectron2_checkout(str(tmp_path)) == str(tmp_path / "detectron2")
    assert bootstrap.detectron2_import_paths(str(tmp_path / "detectron2")) == [str(tmp_path / "detectron2")]


def test_every_make_command_gets_the_runtime_policy_from_its_one_home():
    """The Makefile takes OMP_WAIT_POLICY from mgd/runtime.py (train_net.py applies the same
    module), and keeps a value the user set."""
    from mgd.runtime import RUNTIME_DEFAULTS

    env = {k: v for k, v in MAKE_ENV.items() if k != "OMP_WAIT_POLICY"}
    run = dict(capture_output=True, text=True, check=True)
    make = ["make", "--no-print-directory", "-C", REPO, "print-OMP_WAIT_POLICY", f"PYTHON={sys.executable}"]
    assert subprocess.run(make, env=env, **run).stdout.strip() == RUNTIME_DEFAULTS["OMP_WAIT_POLICY"] == "PASSIVE"
    assert subprocess.run(make, env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, **run).stdout.strip() == "ACTIVE"
