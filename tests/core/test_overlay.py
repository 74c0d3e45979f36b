"""The overlay's copy in the checkout is never stale when code runs: mgd.overlay on a small tree,
and train_net.py (a subprocess on a copy of the repository and of the checkout's package) after
an edit of d2/: the edited code runs, or one `error:` line when the copy cannot be refreshed."""
import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mgd.overlay import (OVERLAY_FOLDERS, OverlayError, copy_overlay, overlay_files, overlay_modules, refresh_overlay,
                         stale_files)

REPO = Path(__file__).resolve().parents[2]


def small_tree(root: Path):
    """root/repo with d2/ and configs/, root/checkout with a detectron2/ package and configs."""
    repo, checkout = root / "repo", root / "checkout"
    (repo / "d2" / "engine").mkdir(parents=True)
    (repo / "d2" / "engine" / "mgd_a.py").write_text("A = 1\n")
    (repo / "d2" / "modeling" / "meta_arch").mkdir(parents=True)
    (repo / "d2" / "modeling" / "meta_arch" / "mgd_b.py").write_text("B = 1\n")
    (repo / "configs").mkdir()
    (repo / "configs" / "c.yaml").write_text("x: 1\n")
    (checkout / "detectron2" / "engine").mkdir(parents=True)
    (checkout / "configs" / "COCO-Detection").mkdir(parents=True)
    return repo, checkout


def test_the_folders_and_where_each_file_goes(tmp_path):
    repo, checkout = small_tree(tmp_path)
    assert [f.source for f in OVERLAY_FOLDERS] == ["d2", "configs"]
    got = {str(src.relative_to(repo)): str(dst.relative_to(checkout)) for src, dst in stale_files(repo, checkout)}
    assert got == {"d2/engine/mgd_a.py": "detectron2/engine/mgd_a.py",
                   "d2/modeling/meta_arch/mgd_b.py": "detectron2/modeling/meta_arch/mgd_b.py",
                   "configs/c.yaml": "configs/COCO-Detection/c.yaml"}
    assert overlay_modules(repo) == ["detectron2.engine.mgd_a", "detectron2.modeling.meta_arch.mgd_b"]


def test_copy_then_nothing_stale_then_only_the_edited_file(tmp_path):
    repo, checkout = small_tree(tmp_path)
    assert len(copy_overlay(repo, checkout)) == 3
    copy = checkout / "detectron2" / "modeling" / "meta_arch" / "mgd_b.py"
    header, body = copy.read_text().split("\n", 1)
    assert body == "B = 1\n"  # the source's bytes, after one line
    assert header.startswith("# Copy of d2/modeling/meta_arch/mgd_b.py by `make overlay` (sha256 ")
    assert header.endswith("): edit that file; this copy is read-only.")
    assert hashlib.sha256(b"B = 1\n").hexdigest()[:16] in header  # the digest of what it was given
    assert (checkout / "configs" / "COCO-Detection" / "c.yaml").read_text().split("\n", 1)[1] == "x: 1\n"
    assert copy_overlay(repo, checkout) == []
    (repo / "d2" / "engine" / "mgd_a.py").write_text("A = 2\n")  # same size, other bytes
    said = []
    assert refresh_overlay(repo, checkout, say=said.append) == 1
    assert (checkout / "detectron2" / "engine" / "mgd_a.py").read_text().endswith("\nA = 2\n")
    assert len(said) == 1 and said[0].startswith("overlay: d2/engine/mgd_a.py changed; refreshed the copy in")
    assert refresh_overlay(repo, checkout, say=said.append) == 0 and len(said) == 1


def test_every_copy_is_read_only(tmp_path):
    repo, checkout = small_tree(tmp_path)
    copy_overlay(repo, checkout)
    for _, dst in overlay_files(repo, checkout):
        assert stat.S_IMODE(dst.stat().st_mode) & 0o222 == 0, dst


def test_an_edit_in_the_checkout_stops_the_refresh_and_is_kept(tmp_path):
    """An edit made in the copy (where "go to definition" leads) is never overwritten: the
    refresh stops with one error naming both files, and copies nothing, not even other files."""
    repo, checkout = small_tree(tmp_path)
    copy_overlay(repo, checkout)
    copy = checkout / "detectron2" / "engine" / "mgd_a.py"
    os.chmod(copy, 0o644)
    edited = copy.read_text() + "A = 3  # my fix\n"
    copy.write_text(edited)
    (repo / "d2" / "engine" / "mgd_a.py").write_text("A = 2\n")  # the source moved on too
    (repo / "configs" / "c.yaml").write_text("x: 2\n")
    with pytest.raises(OverlayError) as caught:
        refresh_overlay(repo, checkout)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{copy} was edited after `make overlay` copied it from d2/engine/mgd_a.py")
    assert f"move the edit into {repo.resolve() / 'd2' / 'engine' / 'mgd_a.py'}" in message
    assert copy.read_text() == edited
    assert (checkout / "configs" / "COCO-Detection" / "c.yaml").read_text().endswith("x: 1\n")
    copy.unlink()  # as the message says: the edit moved to the source, the copy deleted
    assert refresh_overlay(repo, checkout, say=lambda line: None) == 2


def test_a_copy_made_before_headers_is_renewed_and_any_other_file_is_kept(tmp_path):
    repo, checkout = small_tree(tmp_path)
    old_copy = checkout / "detectron2" / "engine" / "mgd_a.py"
    old_copy.write_text("A = 1\n")  # as older versions copied: the source's bytes alone
    foreign = checkout / "detectron2" / "modeling" / "meta_arch" / "mgd_b.py"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("B = 'not from d2/'\n")
    with pytest.raises(OverlayError, match="mgd_b.py is not a copy made by `make overlay` from "
                                           "d2/modeling/meta_arch/mgd_b.py"):
        copy_overlay(repo, checkout)
    assert foreign.read_text() == "B = 'not from d2/'\n" and old_copy.read_text() == "A = 1\n"
    foreign.unlink()
    assert len(copy_overlay(repo, checkout)) == 3 and stale_files(repo, checkout) == []


def test_no_package_or_an_unwritable_copy_is_one_error(tmp_path):
    repo, checkout = small_tree(tmp_path)
    with pytest.raises(OverlayError, match="holds no Detectron2 package"):
        copy_overlay(repo, tmp_path / "elsewhere")
    (checkout / "detectron2" / "engine" / "mgd_a.py" / "in-the-way").mkdir(parents=True)
    with pytest.raises(OverlayError, match=r"cannot copy d2/engine/mgd_a.py into .* make that folder writable"):
        copy_overlay(repo, checkout)
    assert not [p for p in (checkout / "detectron2" / "engine").iterdir() if p.name.startswith(".")]  # no temp left


MARK = "the edited d2/ code runs"


def repo_and_checkout_copies(tmp_path: Path):
    """A copy of what train_net.py needs of this repository, d2/engine/mgd_trainer.py edited to
    print MARK, and a copy of the checkout's package holding the overlay as it was."""
    from d2_support import CHECKOUT

    repo, checkout = tmp_path / "repo", tmp_path / "checkout"
    repo.mkdir()
    for name in ("mgd", "d2", "configs"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("train_net.py", "Makefile"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(CHECKOUT / "detectron2", checkout / "detectron2", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(CHECKOUT / "configs", checkout / "configs")
    if (CHECKOUT / "mgd-python-deps").is_dir():  # today's Detectron2: its extra packages
        (checkout / "mgd-python-deps").symlink_to(CHECKOUT / "mgd-python-deps")
    assert copy_overlay(repo, checkout) == []  # the copy was up to date before the edit
    trainer = repo / "d2" / "engine" / "mgd_trainer.py"
    trainer.write_text(trainer.read_text() + f"\nprint({MARK!r}, flush=True)\n")
    return repo, checkout


def run_train_net(repo: Path, checkout: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MGD_DETECTRON2_DIR"] = str(checkout)
    return subprocess.run([sys.executable, "train_net.py", "--help"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.detectron2
def test_train_net_refreshes_a_stale_overlay_and_runs_the_edited_code(tmp_path):
    repo, checkout = repo_and_checkout_copies(tmp_path)
    proc = run_train_net(repo, checkout)
    assert proc.returncode == 0, proc.stderr
    assert f"overlay: d2/engine/mgd_trainer.py changed; refreshed the copy in {checkout}" in proc.stderr
    assert MARK in proc.stdout
    assert MARK in (checkout / "detectron2" / "engine" / "mgd_trainer.py").read_text()


@pytest.mark.detectron2
def test_train_net_refuses_in_one_line_when_the_copy_cannot_be_refreshed(tmp_path):
    repo, checkout = repo_and_checkout_copies(tmp_path)
    copy = checkout / "detectron2" / "engine" / "mgd_trainer.py"
    copy.unlink()
    (copy / "in-the-way").mkdir(parents=True)
    proc = run_train_net(repo, checkout)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot copy d2/engine/mgd_trainer.py into {copy.parent} (Is a directory): make that folder "
        "writable, or point MGD_DETECTRON2_DIR (DETECTRON2_DIR for make) at a checkout you can write to"]
    assert MARK not in proc.stdout


@pytest.mark.detectron2
def test_train_net_refuses_in_one_line_when_a_copy_was_edited_in_the_checkout(tmp_path):
    repo, checkout = repo_and_checkout_copies(tmp_path)
    copy = checkout / "detectron2" / "engine" / "mgd_trainer.py"
    os.chmod(copy, 0o644)
    edited = copy.read_text().replace("class MGDTrainer", "class MGDTrainer  # my fix", 1)
    copy.write_text(edited)
    proc = run_train_net(repo, checkout)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {copy} was edited after `make overlay` copied it from d2/engine/mgd_trainer.py: its edit would "
        f"be lost; move the edit into {repo / 'd2' / 'engine' / 'mgd_trainer.py'} (the source), then delete {copy} "
        "and run `make overlay`"]
    assert copy.read_text() == edited and MARK not in proc.stdout
