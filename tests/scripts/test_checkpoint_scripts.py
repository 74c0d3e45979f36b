"""Checkpoint scripts: key mapping, round trips, restricted loading, atomic writes.

Framework-free: numpy always, torch only where a .pth is involved; no Detectron2.
"""

import io
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from scripts_support import (
    SCRIPTS,
    assert_one_line_error,
    converted_student,
    d2_pickle,
    load_file,
    malicious_checkpoint,
    read_d2,
    retinanet_state_dict,
    run_script,
    torchvision_resnet_keys,
    write_pickle,
)

import mgd.checkpoint as cio
from mgd.cli import run_cli


def load_script(filename):
    """Import a (possibly hyphenated) script as a module, to call its main() in-process."""
    return load_file(SCRIPTS / filename)


def assert_same_arrays(a, b):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---- mapping (in-process) ------------------------------------------------------------------

def test_merge_then_split_maps_keys_exactly():
    teacher = retinanet_state_dict(50)
    student = converted_student(18)["model"]
    merged = cio.merge_teacher_student(teacher, student)
    assert set(merged) == ({"t_net." + k for k in teacher}
                           | {"s_net.backbone.bottom_up." + k for k in student})
    kept, dropped = cio.split_distilled(merged)
    assert_same_arrays(kept, {"backbone.bottom_up." + k: v for k, v in student.items()})
    assert dropped == {"t_net.": len(teacher)}
    kept_t, _ = cio.split_distilled(merged, eval_teacher=True)
    assert_same_arrays(kept_t, teacher)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_depth_from_key_names(depth):
    assert cio.resnet_depth(converted_student(depth)["model"]) == depth
    assert cio.resnet_depth(retinanet_state_dict(depth), "backbone.bottom_up.") == depth


def test_depth_of_unknown_layout_is_none():
    assert cio.resnet_depth({"res2.0.conv1.weight": 0, "res3.0.conv1.weight": 0}) is None
    assert cio.resnet_depth({"head.cls_score.weight": 0}) is None


# ---- the CLIs, end to end -----------------------------------------------------------------

def test_merge_and_convert_cli_round_trip(tmp_path):
    teacher = retinanet_state_dict(50)
    student = converted_student(18)
    write_pickle(tmp_path / "t50.pkl", d2_pickle(teacher))
    write_pickle(tmp_path / "r-18.pkl", student)

    proc = run_script("merge-models-into-one.py", "t50.pkl", "r-18.pkl", "T50-S18.pkl",
                      "--teacher-depth", "50", "--student-depth", "18", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) <= 4  # a summary, not a line per key
    assert "ResNet-50" in proc.stdout and "ResNet-18" in proc.stdout
    merged = read_d2(tmp_path / "T50-S18.pkl")
    expected = {"t_net." + k: v for k, v in teacher.items()}
    expected.update({"s_net.backbone.bottom_up." + k: v for k, v in student["model"].items()})
    assert_same_arrays(merged, expected)

    proc = run_script("convert-output-to-d2.py", "T50-S18.pkl", "student.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    assert_same_arrays(read_d2(tmp_path / "student.pkl"),
                       {"backbone.bottom_up." + k: v for k, v in student["model"].items()})

    proc = run_script("convert-output-to-d2.py", "T50-S18.pkl", "teacher.pkl",
                      "--eval-teacher", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert_same_arrays(read_d2(tmp_path / "teacher.pkl"), teacher)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["t50.pkl", "r-18.pkl", "T50-S18.pkl", "student.pkl", "teacher.pkl"])


@pytest.mark.parametrize("module, shim", [("mgd_tools.merge_models", "merge-models-into-one.py"),
                                          ("mgd_tools.convert_output", "convert-output-to-d2.py")])
def test_the_originals_script_names_are_shims_of_importable_modules(tmp_path, module, shim):
    """``python -m mgd_tools.X`` is the tool; the original repository's hyphenated name runs the
    same code with the same arguments, and writes the same file."""
    write_pickle(tmp_path / "t50.pkl", d2_pickle(retinanet_state_dict(50)))
    write_pickle(tmp_path / "r-18.pkl", converted_student(18))
    inputs = ["t50.pkl", "r-18.pkl"] if "merge" in module else ["merged.pkl"]
    if "convert" in module:
        write_pickle(tmp_path / "merged.pkl", d2_pickle(cio.merge_teacher_student(
            retinanet_state_dict(50), converted_student(18)["model"])))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    by_module = subprocess.run([sys.executable, "-m", module, *inputs, "out-module.pkl"], cwd=tmp_path, env=env,
                               capture_output=True, text=True)
    assert by_module.returncode == 0, by_module.stderr
    by_shim = run_script(shim, *inputs, "out-shim.pkl", cwd=tmp_path)
    assert by_shim.returncode == 0, by_shim.stderr
    assert by_shim.stdout.replace("out-shim", "out-module") == by_module.stdout
    assert (tmp_path / "out-shim.pkl").read_bytes() == (tmp_path / "out-module.pkl").read_bytes()
    usage = run_script(shim, cwd=tmp_path)  # each names itself in its usage error
    assert usage.returncode == 2 and f"run {shim} --help for usage" in usage.stderr
    usage = subprocess.run([sys.executable, "-m", module], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and f"run python -m {module} --help for usage" in usage.stderr


def test_random_init_mark_travels_through_merge_and_split(tmp_path):
    """A student from `make weights RANDOM_INIT=1` (marked) makes a marked merged file, whose
    splits are marked too; unmarked inputs give unmarked outputs."""
    write_pickle(tmp_path / "t50.pkl", d2_pickle(retinanet_state_dict(50)))
    write_pickle(tmp_path / "r-18.pkl", converted_student(18))
    write_pickle(tmp_path / "r-18.random.pkl", {**converted_student(18), "__random_init__": True})
    for student, marked in (("r-18.pkl", False), ("r-18.random.pkl", True)):
        out = f"merged-{marked}.pkl"
        proc = run_script("merge-models-into-one.py", "t50.pkl", student, out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert ("marked as random init" in proc.stdout) is marked
        assert cio.is_random_init(cio.load_checkpoint_object(tmp_path / out)) is marked
        for flag, split in (([], f"student-{marked}.pkl"), (["--eval-teacher"], f"teacher-{marked}.pkl")):
            proc = run_script("convert-output-to-d2.py", out, split, *flag, cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr
            assert cio.is_random_init(cio.load_checkpoint_object(tmp_path / split)) is marked
    proc = run_script("random_init_marker.py", "show", "r-18.random.pkl", cwd=tmp_path)
    assert proc.stdout == "random\n"
    proc = run_script("random_init_marker.py", "mark", "r-18.pkl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert run_script("random_init_marker.py", "show", "r-18.pkl", cwd=tmp_path).stdout == "random\n"
    marked = cio.load_checkpoint_object(tmp_path / "r-18.pkl")
    assert marked["__author__"] == "torchvision"
    assert_same_arrays(marked["model"], converted_student(18)["model"])


def test_merge_accepts_a_detectron2_pth_teacher(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    teacher = retinanet_state_dict(50)
    # what DetectionCheckpointer writes: tensors under "model", plus trainer state
    torch.save({"model": {k: torch.from_numpy(v) for k, v in teacher.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
                "scheduler": {"milestones": [60, 80], "last_epoch": 99, "base_lrs": [0.01]},
                "iteration": 99}, tmp_path / "model_final.pth")
    write_pickle(tmp_path / "r-18.pkl", converted_student(18))
    merge = load_script("merge-models-into-one.py")
    rc = run_cli(merge.main, [str(tmp_path / "model_final.pth"), str(tmp_path / "r-18.pkl"),
                                  str(tmp_path / "out.pkl"), "--teacher-depth", "50"])
    assert rc == 0, capsys.readouterr().err
    merged = read_d2(tmp_path / "out.pkl")
    assert_same_arrays({k[6:]: v for k, v in merged.items() if k.startswith("t_net.")}, teacher)


def test_convert_all_converts_every_pth_and_reports_failures(tmp_path):
    torch = pytest.importorskip("torch")
    teacher = retinanet_state_dict(50)
    student_det = retinanet_state_dict(18, seed=7)
    model = {"t_net." + k: torch.from_numpy(v) for k, v in teacher.items()}
    model.update({"s_net." + k: torch.from_numpy(v) for k, v in student_det.items()})
    model["distiller.norms.0.weight"] = torch.ones(4)  # trainable per-position norms
    for it in ("0000099", "final"):
        torch.save({"model": model, "iteration": 99}, tmp_path / f"model_{it}.pth")
    data = (tmp_path / "model_final.pth").read_bytes()
    (tmp_path / "broken.pth").write_bytes(data[: len(data) // 2])
    marker = tmp_path / "pwned"
    torch.save(malicious_checkpoint(marker), tmp_path / "evil.pth")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")

    proc = run_script("convert_all.py", tmp_path)
    assert proc.returncode != 0
    assert not marker.exists()
    out = proc.stdout.splitlines()
    for name in ("broken", "evil", "model_0000099", "model_final"):
        assert f"{name}.pth -> {name}.pkl" in out
    err = proc.stderr.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), proc.stderr
    assert "truncated or corrupt" in err[0] and "refusing" in err[1]
    assert "2 checkpoint(s) failed" in err[2]
    for it in ("0000099", "final"):
        assert_same_arrays(read_d2(tmp_path / f"model_{it}.pkl"), student_det)
    names = set(os.listdir(tmp_path))
    assert "broken.pkl" not in names and "evil.pkl" not in names
    assert not [n for n in names if n.startswith(".")], names  # no temp files


def test_convert_all_eval_teacher(tmp_path):
    teacher, student = retinanet_state_dict(50), retinanet_state_dict(18, seed=3)
    model = {"t_net." + k: v for k, v in teacher.items()}
    model.update({"s_net." + k: v for k, v in student.items()})
    write_pickle(tmp_path / "model_final.pth", d2_pickle(model))  # content is sniffed
    proc = run_script("convert_all.py", tmp_path, "--eval-teacher")
    assert proc.returncode == 0, proc.stderr
    assert "model_final.pth -> model_final.teacher.pkl" in proc.stdout.splitlines()
    assert_same_arrays(read_d2(tmp_path / "model_final.teacher.pkl"), teacher)
    assert not (tmp_path / "model_final.pkl").exists()
    # the student's conversion, before or after, never overwrites the teacher's (or the reverse)
    assert run_script("convert_all.py", tmp_path).returncode == 0
    assert_same_arrays(read_d2(tmp_path / "model_final.pkl"), student)
    assert_same_arrays(read_d2(tmp_path / "model_final.teacher.pkl"), teacher)
    assert run_script("convert_all.py", tmp_path, "--eval-teacher").returncode == 0
    assert_same_arrays(read_d2(tmp_path / "model_final.pkl"), student)


def test_random_torchvision_weights_are_deterministic_and_convertible(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    mk = load_script("make_random_torchvision_weights.py")
    for name, seed in (("a.pth", 3), ("b.pth", 3), ("c.pth", 4)):
        assert run_cli(mk.main, ["--depth", "18", str(tmp_path / name), "--seed", str(seed)]) == 0
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()
    a = torch.load(tmp_path / "a.pth", weights_only=True)
    c = torch.load(tmp_path / "c.pth", weights_only=True)
    assert list(a) == torchvision_resnet_keys(18)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "b.pth", "c.pth"]


# ---- restricted unpickler -----------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_plain_data(protocol):
    obj = {"model": {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                     "n": np.array(5, dtype=np.int64), "h": np.ones(2, np.float16)},
           "s": np.float64(2.5), "t": (1, 2.0, "x", b"\x00\xff", None, True),
           "set": {1, 2}, "__author__": "torchvision"}
    back = cio.restricted_loads(pickle.dumps(obj, protocol=protocol))
    assert back["t"] == obj["t"] and back["set"] == {1, 2} and back["s"] == 2.5
    for k, v in obj["model"].items():
        assert back["model"][k].dtype == v.dtype
        np.testing.assert_array_equal(back["model"][k], v)


@pytest.mark.parametrize("payload", [
    pytest.param(lambda p: malicious_checkpoint(p, "system"), id="os.system"),
    pytest.param(lambda p: malicious_checkpoint(p, "open"), id="builtins.open"),
    pytest.param(lambda p: {"model": {"x": np.ma.masked_array([1.0])}}, id="ndarray-subclass"),
    pytest.param(lambda p: {"model": {"x": io.BytesIO(b"")}}, id="other-class"),
])
def test_restricted_unpickler_refuses_anything_else(tmp_path, payload):
    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError):
        cio.restricted_loads(pickle.dumps(payload(marker), protocol=4))
    assert not marker.exists()


def test_refused_pickle_message_names_the_global(tmp_path):
    marker = tmp_path / "pwned"
    write_pickle(tmp_path / "evil.pkl", malicious_checkpoint(marker))
    with pytest.raises(cio.CheckpointError, match=r"refusing .*'(posix|nt|os)\.system'"):
        cio.load_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_torch_malicious_pth_is_refused(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    torch.save(malicious_checkpoint(marker), tmp_path / "evil.pth")
    merge = load_script("merge-models-into-one.py")
    write_pickle(tmp_path / "r-18.pkl", converted_student(18))
    rc = run_cli(merge.main, [str(tmp_path / "evil.pth"), str(tmp_path / "r-18.pkl"),
                                  str(tmp_path / "out.pkl")])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: refusing"), err
    assert not marker.exists() and not (tmp_path / "out.pkl").exists()


def test_pth_with_numpy_arrays_loads(tmp_path):
    torch = pytest.importorskip("torch")
    sd = retinanet_state_dict(18)
    torch.save({"model": sd}, tmp_path / "np.pth")
    assert_same_arrays(cio.load_checkpoint(tmp_path / "np.pth"), sd)


# ---- atomic writes ------------------------------------------------------------------------

def test_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.pkl"
    target.write_bytes(b"old")

    def explode(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        cio.atomic_write(target, explode)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.pkl"]


def test_save_refuses_non_arrays_before_writing(tmp_path):
    with pytest.raises(cio.CheckpointError, match="not an array"):
        cio.save_d2_pickle({"a": np.zeros(1), "b": "text"}, tmp_path / "o.pkl")
    assert os.listdir(tmp_path) == []


def test_error_messages_are_single_lines():
    assert str(cio.CheckpointError("a\nb\n\n  c")) == "a b c"


# ---- one module decides (mgd.checkpoint.inputs) ---------------------------------------------

def test_every_checkpoint_script_asks_the_strict_module(tmp_path, monkeypatch, capsys):
    """merge, convert and convert_all refuse what mgd.checkpoint.inputs refuses, and nothing
    else: with its rules replaced by "refuse everything", each script ends on that one line;
    with the rules in place, the same good files pass."""
    import mgd.checkpoint.inputs as inputs

    write_pickle(tmp_path / "t50.pkl", d2_pickle(retinanet_state_dict(50)))
    write_pickle(tmp_path / "r-18.pkl", converted_student(18))
    merge = load_script("merge-models-into-one.py")
    convert = load_script("convert-output-to-d2.py")
    convert_all = load_script("convert_all.py")
    out = tmp_path / "out"
    out.mkdir()

    def run_all():
        rcs = [run_cli(merge.main, [str(tmp_path / "t50.pkl"), str(tmp_path / "r-18.pkl"),
                                    str(out / "merged.pth")])]
        if not (out / "merged.pth").exists():  # the refused merge wrote nothing: use a good file
            write_pickle(out / "merged.pth", d2_pickle(cio.merge_teacher_student(
                retinanet_state_dict(50), converted_student(18)["model"])))
        rcs.append(run_cli(convert.main, [str(out / "merged.pth"), str(tmp_path / "student.pkl")]))
        rcs.append(run_cli(convert_all.main, [str(out), "--eval-teacher"]))
        return rcs, capsys.readouterr().err

    rcs, err = run_all()
    assert rcs == [0, 0, 0], err

    def refuse(*args, **kwargs):
        raise cio.CheckpointError("strict says no")

    for rule in ("validate_teacher", "check_split"):
        monkeypatch.setattr(inputs, rule, refuse)
    for produced in ("student.pkl",):
        (tmp_path / produced).unlink()
    for produced in ("merged.pth", "merged.teacher.pkl"):
        (out / produced).unlink()
    rcs, err = run_all()
    assert rcs == [2, 2, 2]
    assert [line for line in err.splitlines() if line.startswith("error: ")][:2] == [
        "error: strict says no", "error: strict says no"]
    assert "error: strict says no" in err.splitlines()[2]
    assert not (tmp_path / "student.pkl").exists() and not (out / "merged.teacher.pkl").exists()
