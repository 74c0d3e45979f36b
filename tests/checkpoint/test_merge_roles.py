"""`make merge` checks the roles: a teacher that is not deeper than the
student, or the same file twice, is one ``error:`` line and nothing written; ALLOW_ANY_TEACHER=1
(--allow-shallow-teacher) merges such a teacher for experiments."""
import subprocess
import sys

import pytest

from scripts_support import assert_refused, read_d2
from scripts_support import REPO, converted_student, d2_pickle, retinanet_state_dict, write_pickle

import mgd.checkpoint as cio


@pytest.fixture
def checkpoints(tmp_path):
    for depth in (18, 50):
        write_pickle(tmp_path / f"t{depth}.pkl", d2_pickle(retinanet_state_dict(depth)))
        write_pickle(tmp_path / f"r-{depth}.pkl", converted_student(depth))
    return tmp_path


def make_merge(teacher, student, merged, *extra):
    return subprocess.run(["make", "--no-print-directory", "merge", f"PYTHON={sys.executable}", f"TEACHER={teacher}",
                           f"STUDENT={student}", f"MERGED={merged}", *extra], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


@pytest.mark.parametrize("teacher, student", [(18, 18), (18, 50), (50, 50)])
def test_make_merge_refuses_a_teacher_not_deeper_than_the_student(checkpoints, teacher, student):
    merged = checkpoints / "merged.pkl"
    proc = make_merge(checkpoints / f"t{teacher}.pkl", checkpoints / f"r-{student}.pkl", merged)
    line = assert_refused(proc, f"is a ResNet-{teacher}, not deeper than the student", merged)
    assert f"(ResNet-{student})" in line and "ALLOW_ANY_TEACHER=1" in line


def test_allow_any_teacher_merges_it(checkpoints):
    merged = checkpoints / "merged.pkl"
    proc = make_merge(checkpoints / "t18.pkl", checkpoints / "r-18.pkl", merged, "ALLOW_ANY_TEACHER=1")
    assert proc.returncode == 0, proc.stdout
    assert "--allow-shallow-teacher" in proc.stdout  # the printed command
    keys = set(read_d2(merged))
    assert keys == ({"t_net." + k for k in retinanet_state_dict(18)}
                    | {"s_net.backbone.bottom_up." + k for k in converted_student(18)["model"]})


def test_the_paper_pair_merges(checkpoints):
    proc = make_merge(checkpoints / "t50.pkl", checkpoints / "r-18.pkl", checkpoints / "merged.pkl")
    assert proc.returncode == 0, proc.stdout


def test_make_merge_refuses_the_same_file_twice(checkpoints):
    merged = checkpoints / "merged.pkl"
    (checkpoints / "link.pkl").symlink_to(checkpoints / "t50.pkl")
    for flags in ([], ["ALLOW_ANY_TEACHER=1"]):  # the flag does not make one file two roles
        proc = make_merge(checkpoints / "t50.pkl", checkpoints / "link.pkl", merged, *flags)
        assert_refused(proc, f"TEACHER and STUDENT are the same file '{checkpoints / 't50.pkl'}'", merged)


def test_check_roles_compares_depths_only_when_both_are_known():
    cio.check_roles(50, 18, "t", "s")
    cio.check_roles(None, 18, "t", "s")  # a ResNet layout of no standard depth: not compared
    cio.check_roles(18, 50, "t", "s", allow_shallow_teacher=True)
    with pytest.raises(cio.CheckpointError, match="'t' is a ResNet-34, not deeper than the student 's' "
                                                  r"\(ResNet-34\)"):
        cio.check_roles(34, 34, "t", "s")
