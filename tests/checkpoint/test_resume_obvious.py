"""Resume is obvious, through train_net.py and the make targets: a folder that
holds a run is never restarted silently (one line naming --resume/--fresh, RESUME=1/FRESH=1;
nothing overwritten), --resume continues, --fresh moves the old run aside, ``--resume`` among
the overrides (or in OPTS) is pointed to the right flag/variable, and Ctrl-C saves the last
finished iteration and ends with one line naming the file and the command that resumes."""
import json
import shlex
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
from interrupt_support import SAVED, assert_stopped_promptly, interrupt  # noqa: E402
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


def test_resume_of_a_finished_run_says_so_and_trains_nothing(tmp_path, synth, finished_run):
    out = _copy_run(finished_run, tmp_path)
    before = _snapshot(out)
    proc = _train(out, synth, "--resume", opts=["SOLVER.MAX_ITER", "2"])
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines[-1] == (
        f"{out} holds a finished run: model_final.pth is the state after iteration 1 (SOLVER.MAX_ITER 2); nothing to "
        "train. Its evaluation: make eval (train_net.py --eval-only); to train it again: FRESH=1 (--fresh); to train "
        "longer: a larger SOLVER.MAX_ITER"), proc.stdout[-3000:]
    assert "Starting training" not in proc.stdout and "Traceback" not in proc.stdout
    assert _snapshot(out) == before  # no log, no config.yaml rewritten, nothing appended


def test_resume_forgets_what_an_interrupted_run_logged_past_its_checkpoint(tmp_path):
    """An interrupted run logs past its last checkpoint (a matching of the unfinished iteration,
    a final metrics line); the resumed run repeats those iterations, and logs them once."""
    from detectron2.engine.mgd_resume_logs import forget_logs_after

    (tmp_path / "metrics.json").write_text("".join(f'{{"iteration": {i}, "total_loss": 1.5}}\n'
                                                   for i in (19, 39, 45, 46, 59)))
    (tmp_path / "mgd_matching.json").write_text('{"iteration": 0}\n{"iteration": 40}\n{"iteration": 46}\n')
    line = forget_logs_after(str(tmp_path), 45)
    assert [json.loads(x)["iteration"] for x in (tmp_path / "metrics.json").read_text().splitlines()] == [19, 39, 45]
    assert [json.loads(x)["iteration"] for x in (tmp_path / "mgd_matching.json").read_text().splitlines()] == [0, 40]
    assert line == ("--resume from the state after iteration 45: the lines of later iterations, which this run repeats, "
                    "were removed (2 of metrics.json, 1 of mgd_matching.json)")
    assert forget_logs_after(str(tmp_path), 45) is None and sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json", "mgd_matching.json"]


def test_resume_and_fresh_together_are_refused(tmp_path, synth):
    out = tmp_path / "run"
    proc = _train(out, synth, "--resume", "--fresh", check=False)
    assert_refused(proc, "--resume and --fresh (make: RESUME=1, FRESH=1) exclude each other", out)


def test_resume_among_the_overrides_is_pointed_to_its_place(tmp_path, synth):
    out = tmp_path / "run"
    proc = _train(out, synth, opts=["SOLVER.MAX_ITER", "2", "--resume"], check=False)
    line = assert_refused(proc, "--resume among the KEY VALUE config overrides, where flags are not read", out)
    assert "train_net.py --resume --config-file" in line and "OPTS takes overrides only: RESUME=1 for --resume" in line


@pytest.mark.parametrize("target", ["base", "distill", "eval", "probe"])
def test_make_points_a_flag_in_opts_to_its_variable(tmp_path, target):
    """OPTS reaches train_net.py unchecked (the rule's one home): every make target that takes
    OPTS refuses a flag there in one line naming the variable that carries it, before writing."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "r-50.pkl").touch()  # what the targets' own checks require; never read here
    (inputs / "merged.pth").touch()
    given = [f"OUTPUT_DIR={tmp_path / 'out'}", f"WEIGHTS_DIR={inputs}", f"MERGED={inputs / 'merged.pth'}"]
    proc = run_make(target, "OPTS=SOLVER.MAX_ITER 3 --resume", *given)
    assert_refused(proc, "OPTS takes overrides only: RESUME=1 for --resume", tmp_path / "out")
    proc = run_make(target, "OPTS=SOLVER.MAX_ITER 3 --fresh --eval-only", *given)
    assert_refused(proc, 'FRESH=1 for --fresh; LAUNCH_ARGS="--eval-only" for --eval-only', tmp_path / "out")


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


@pytest.mark.slow
@pytest.mark.latest_pass
def test_ctrl_c_saves_the_last_iteration_and_the_printed_command_resumes(tmp_path, synth):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train_net.py"), *map(str, synthetic_dataset_args(synth)), "--config-file",
           str(R18_DEMO), *TINY_RUN, "SOLVER.MAX_ITER", "500", "OUTPUT_DIR", str(out)]
    code, output, finished_when_sent = interrupt(cmd)
    assert code == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    match = SAVED.match(last)
    assert match, last
    path, step, step_again, done, max_iter, command = match.groups()
    assert Path(path) == out / f"model_{step}.pth" and int(step_again) == int(step)
    assert int(done) == int(step) + 1 >= 2 and max_iter == "500"
    assert_stopped_promptly(int(done), finished_when_sent)
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
def test_ctrl_c_of_a_make_target_prints_a_make_command_that_resumes_in_a_new_shell(tmp_path, synth, weights_dir):
    """As the README's own-data block: DATASETS and OPTS exported by the shell, the rest on the
    command line. The printed command carries them all, and runs to the end in a shell that
    has none of them."""
    args = _make_base_args(tmp_path, synth, weights_dir, 40)
    exported = dict(arg.split("=", 1) for arg in args if arg.startswith(("DATASETS=", "OPTS=")))
    given = [arg for arg in args if not arg.startswith(("DATASETS=", "OPTS="))]
    code, output, finished_when_sent = interrupt(["make", "--no-print-directory", *given, f"PYTHON={sys.executable}"],
                                                 env=exported)
    assert "Traceback" not in output, output[-3000:]
    line = [x for x in output.splitlines() if x.startswith("interrupted")]
    assert len(line) == 1, output[-3000:]
    match = SAVED.match(line[0])
    assert match and Path(match.group(1)).parent == tmp_path / "base-R18", line[0]
    assert_stopped_promptly(int(match.group(4)), finished_when_sent)
    command = match.group(6)
    words = shlex.split(command)
    assert words[:2] == ["make", "base"] and words[-1] == "RESUME=1"
    assert f"OUTPUT_DIR={tmp_path}" in words and "DEPTH=18" in words
    assert f"OPTS={exported['OPTS']}" in words and f"DATASETS={exported['DATASETS']}" in words
    fresh_shell = {k: v for k, v in detectron2_env().items() if k not in exported}
    resumed = subprocess.run(["bash", "-c", command], cwd=REPO, env=fresh_shell, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"Starting training from iteration {int(match.group(2)) + 1}" in resumed.stdout
    assert _iteration(tmp_path / "base-R18" / "model_final.pth") == 39
