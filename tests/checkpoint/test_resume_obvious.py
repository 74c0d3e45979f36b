"""Resume is obvious, through train_net.py and the make targets: a folder that
holds a run is never restarted silently (one line naming --resume/--fresh, RESUME=1/FRESH=1;
nothing overwritten), --resume continues, --fresh moves the old run aside, ``--resume`` among
the overrides (or in OPTS) is pointed to the right flag/variable, and Ctrl-C saves the last
finished iteration and ends with one line naming the file and the command that resumes."""
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import (  # noqa: E402
    CHECKOUT,
    REPO,
    TINY_INPUT,
    detectron2_env,
    make_synthetic_dataset,
    run_train_net,
    synthetic_dataset_args,
)
from scripts_support import assert_refused, run_make  # noqa: E402

R18_DEMO = REPO / "configs" / "demo_retinanet_R_18.yaml"
# a plain R18 from scratch (no MODEL.WEIGHTS), no final evaluation
TINY_RUN = TINY_INPUT + ["SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()", "SOLVER.WARMUP_ITERS", "1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_resume", train=4, val=2)


def _train(out, synth, *flags, opts=(), check=True):
    return run_train_net([*flags, "--config-file", R18_DEMO, *TINY_RUN, "OUTPUT_DIR", out, *opts], synth,
                         check=check, cwd=out.parent)


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _iteration(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["iteration"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synth):
    """A 2-iteration run (its folder is copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    _train(out, synth, opts=["SOLVER.MAX_ITER", "2"])
    return out


def _copy_run(finished_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def test_a_folder_with_a_run_is_not_restarted_silently(tmp_path, synth, finished_run):
    out = _copy_run(finished_run, tmp_path)
    before = _snapshot(out)
    proc = _train(out, synth, opts=["SOLVER.MAX_ITER", "2"], check=False)
    assert_refused(proc, f"OUTPUT_DIR {out} already holds a run (last checkpoint model_final.pth); run train_net.py "
                         "--resume to continue it, or --fresh to start over")
    assert _snapshot(out) == before  # nothing overwritten, nothing appended


def test_metrics_without_a_checkpoint_count_as_a_run(tmp_path, synth):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"iteration": 19, "total_loss": 1.0}\n')
    proc = _train(out, synth, opts=["SOLVER.MAX_ITER", "2"], check=False)
    assert_refused(proc, "already holds a run (metrics.json, no checkpoint); run train_net.py --fresh to start over")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_resume_continues_and_fresh_starts_over_keeping_the_old_run(tmp_path, synth, finished_run):
    out = _copy_run(finished_run, tmp_path)
    old_final = (out / "model_final.pth").read_bytes()
    resumed = _train(out, synth, "--resume", opts=["SOLVER.MAX_ITER", "3"])
    assert "Starting training from iteration 2" in resumed.stdout
    assert _iteration(out / "model_final.pth") == 2

    fresh = _train(out, synth, "--fresh", opts=["SOLVER.MAX_ITER", "1"])
    assert "Starting training from iteration 0" in fresh.stdout
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run-replaced-")]
    assert len(moved) == 1 and f"--fresh: the earlier run's files in {out} moved to {moved[0]}/" in fresh.stdout
    assert _iteration(moved[0] / "model_final.pth") == 2  # the resumed run's, kept
    assert (moved[0] / "metrics.json").exists() and (moved[0] / "log.txt").exists()
    assert _iteration(out / "model_final.pth") == 0  # the new run's
    assert (out / "model_final.pth").read_bytes() != old_final


def test_resume_and_fresh_together_are_refused(tmp_path, synth):
    out = tmp_path / "run"
    proc = _train(out, synth, "--resume", "--fresh", check=False)
    assert_refused(proc, "--resume and --fresh (make: RESUME=1, FRESH=1) exclude each other", out)


def test_resume_among_the_overrides_is_pointed_to_its_place(tmp_path, synth):
    out = tmp_path / "run"
    proc = _train(out, synth, opts=["SOLVER.MAX_ITER", "2", "--resume"], check=False)
    line = assert_refused(proc, "--resume is among the KEY VALUE config overrides, where it is not read", out)
    assert "train_net.py --resume --config-file" in line and "RESUME=1, not OPTS=--resume" in line


@pytest.mark.parametrize("target", ["base", "distill", "eval", "probe"])
def test_make_points_opts_resume_to_resume_1(tmp_path, target):
    proc = run_make(target, "OPTS=SOLVER.MAX_ITER 3 --resume", f"OUTPUT_DIR={tmp_path / 'out'}")
    assert_refused(proc, f"OPTS=--resume is not read (OPTS takes KEY VALUE config overrides): resume with RESUME=1, "
                         f"e.g. make {target}", tmp_path / "out")
    proc = run_make(target, "OPTS=--eval-only", f"OUTPUT_DIR={tmp_path / 'out'}")
    assert_refused(proc, "not the flag(s) --eval-only", tmp_path / "out")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """weights/r-18.pkl as `make weights` converts it (here from a random-init torchvision R18)."""
    root = tmp_path_factory.mktemp("weights")
    subprocess.run([sys.executable, REPO / "scripts" / "make_random_torchvision_weights.py", "--depth", "18",
                    root / "resnet18.pth"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, CHECKOUT / "tools" / "convert-torchvision-to-d2.py", root / "resnet18.pth",
                    root / "r-18.pkl"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return root


def _make_base_args(out_root, synth, weights_dir, max_iter):
    datasets = " ".join(str(w) for w in synthetic_dataset_args(synth) if w != "--dataset")
    opts = " ".join(TINY_RUN[:8]) + f" SOLVER.IMS_PER_BATCH 2 DATASETS.TEST () SOLVER.MAX_ITER {max_iter}"
    opts = opts.replace("(64,)", '"(64,)"').replace("()", '"()"')
    return ["base", "DEPTH=18", f"BASE_CONFIG={R18_DEMO}", f"WEIGHTS_DIR={weights_dir}", f"OUTPUT_DIR={out_root}",
            f"DATASETS={datasets}", f"OPTS={opts}"]


@pytest.mark.slow
def test_make_base_refuses_a_restart_names_resume_1_and_resumes(tmp_path, synth, weights_dir):
    args = _make_base_args(tmp_path, synth, weights_dir, 2)
    first = run_make(*args)
    assert first.returncode == 0, first.stdout[-3000:]
    run = tmp_path / "base-R18"
    before = _snapshot(run)
    again = run_make(*args)
    assert_refused(again, "already holds a run (last checkpoint model_final.pth); run the same make command with "
                          "RESUME=1 to continue it, or FRESH=1 to start over")
    assert _snapshot(run) == before
    resumed = run_make(*_make_base_args(tmp_path, synth, weights_dir, 3), "RESUME=1")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "Starting training from iteration 2" in resumed.stdout and _iteration(run / "model_final.pth") == 2


#: a progress line: "iteration i/N, ..." once iteration i finished, "iteration i/N running for ..."
#: while iteration i runs (the heartbeat, when a step outlasts MGD_PROGRESS_SECONDS)
PROGRESS_LINE = re.compile(r"progress: iteration (\d+)/\d+(,| running for)")


def _iterations_finished(line: str):
    """The iterations a progress line says have finished (None for another line)."""
    progress = PROGRESS_LINE.search(line)
    if progress is None:
        return None
    return int(progress.group(1)) - (progress.group(2) == " running for")


def _interrupt(cmd, after_iterations=2, cwd=REPO):
    """Run ``cmd`` in its own process group, Ctrl-C it (SIGINT to the group, as a terminal does)
    once a progress line says ``after_iterations`` iterations have finished; returns (exit code,
    output, the iterations finished by that line's time, None if SIGINT was never sent)."""
    env = dict(detectron2_env(), MGD_PROGRESS_SECONDS="0.2", OMP_NUM_THREADS="2")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines, masks = [], "(none: SIGINT was never sent)"
    try:
        for line in proc.stdout:
            lines.append(line)
            finished = _iterations_finished(line)
            if finished is not None and finished >= after_iterations:
                masks = _signal_dispositions(proc.pid)  # for the failure message, should one come
                os.killpg(proc.pid, signal.SIGINT)
                break
        else:
            finished = None
        lines += proc.stdout.readlines()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if not any(line.startswith("interrupted") for line in lines):
        lines.append(f"\n[test] no 'interrupted' line; the group's processes when SIGINT was sent:\n{masks}\n")
    return proc.returncode, "".join(lines), finished


def _assert_stopped_promptly(done: int, finished_when_sent: int) -> None:
    """The run stopped within a few iterations of the Ctrl-C (at once, or after the update it
    held; the margin is for the test reading the pipe late), not trained on."""
    assert finished_when_sent is not None, "SIGINT was never sent"
    assert finished_when_sent <= done <= finished_when_sent + 3, (done, finished_when_sent)


def _signal_dispositions(group: int) -> str:
    """Each process of process group ``group``: its command and SigBlk/SigIgn/SigCgt masks (Linux)."""
    rows = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != group:  # pgrp
                continue
            status = (stat.parent / "status").read_text()
            masks = " ".join(x.replace("\t", "") for x in status.splitlines() if x.startswith(("SigBlk", "SigIgn", "SigCgt")))
            command = (stat.parent / "cmdline").read_text().replace("\0", " ")[:100]
            rows.append(f"  {stat.parent.name} {masks} {command}")
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
    return "\n".join(rows)


SAVED = re.compile(r"^interrupted: saved (\S+/model_(\d{7})\.pth) after iteration (\d+); resume with: (.+)$", re.M)


@pytest.mark.slow
@pytest.mark.latest_pass
def test_ctrl_c_saves_the_last_iteration_and_the_printed_command_resumes(tmp_path, synth):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train_net.py"), *map(str, synthetic_dataset_args(synth)), "--config-file",
           str(R18_DEMO), *TINY_RUN, "SOLVER.MAX_ITER", "500", "OUTPUT_DIR", str(out)]
    code, output, finished_when_sent = _interrupt(cmd)
    assert code == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    match = SAVED.match(last)
    assert match, last
    path, step, done, command = match.groups()
    assert Path(path) == out / f"model_{step}.pth" and int(done) == int(step) + 1 >= 2
    _assert_stopped_promptly(int(done), finished_when_sent)
    assert _iteration(Path(path)) == int(step)
    assert (out / "last_checkpoint").read_text() == f"model_{step}.pth"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert output.count("interrupted") == 1
    # the printed command resumes at the next iteration (here stopped one iteration later)
    words = shlex.split(command)
    assert words[:3] == ["python", str(REPO / "train_net.py"), "--resume"]
    resumed = subprocess.run([sys.executable, *words[1:], "SOLVER.MAX_ITER", str(int(done) + 1)], cwd=REPO,
                             env=detectron2_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"Starting training from iteration {done}" in resumed.stdout
    assert _iteration(out / "model_final.pth") == int(done)


@pytest.mark.slow
def test_ctrl_c_of_a_make_target_names_the_make_command_with_resume_1(tmp_path, synth, weights_dir):
    args = _make_base_args(tmp_path, synth, weights_dir, 500)
    code, output, finished_when_sent = _interrupt(["make", "--no-print-directory", *args, f"PYTHON={sys.executable}"])
    assert "Traceback" not in output, output[-3000:]
    line = [x for x in output.splitlines() if x.startswith("interrupted")]
    assert len(line) == 1, output[-3000:]
    match = SAVED.match(line[0])
    assert match and Path(match.group(1)).parent == tmp_path / "base-R18", line[0]
    _assert_stopped_promptly(int(match.group(3)), finished_when_sent)
    words = shlex.split(match.group(4))
    assert words[:2] == ["make", "base"] and words[-1] == "RESUME=1"
    assert f"OUTPUT_DIR={tmp_path}" in words and "DEPTH=18" in words
    assert [w for w in words if w.startswith("OPTS=")] == [f"OPTS={args[-1].split('=', 1)[1]}"]
