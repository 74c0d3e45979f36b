"""Resume continues the same training: a run stopped after iteration k and resumed ends bit for
bit where the uninterrupted run ends, through train_net.py, with one and with two (gloo)
processes, for the MGD distillation and for the plain RetinaNet base training.

The data are varied images (the synthetic set: shapes, colours, clutter) of three sizes and both
orientations, so batches grouped by orientation differ from plain ones; random resizing and
flipping are on; the uninterrupted run loads its data in a worker process, the resumed ones in
the training process. Matchings at iterations 0, 4 and 8; checkpoints after 2, 5, 8 and 9. A run
"stopped after iteration k" is the uninterrupted run's folder as it was then: its config, its
checkpoint of iteration k, the metrics and matchings logged until then. Resumed, it must
reproduce the uninterrupted run's final checkpoint (weights, optimizer, scheduler, loss
normalisers, data position, matching), every loss it logged after k, and every matching after k
(no other). k = 5 lies between two matchings (the resumed run does the one at 8 itself); k = 8
is the iteration of a matching (the resumed run continues with the checkpoint's assignment).
A real Ctrl-C, wherever it lands, and the printed resume command must end the same way.
"""
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import (REPO, config_dir, detectron2_env, import_overlay, load_cfg,  # noqa: E402
                        make_mixed_orientation_dataset, run_train_net, synthetic_dataset_args)
from interrupt_support import SAVED, interrupt  # noqa: E402

MGD_DEMO, R18_DEMO = "demo_mgd_R50_R18.yaml", "demo_retinanet_R_18.yaml"
MAX_ITER = 10
RUN = [
    "INPUT.MIN_SIZE_TRAIN", "(40, 48, 56)", "INPUT.MAX_SIZE_TRAIN", "64",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "3", "SOLVER.STEPS", "(7,)",
    "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "3", "DATASETS.TEST", "()", "SEED", "7",
]
MATCHING = ["MGD.UPDATE_ITER", "1", "MGD.UPDATE_FREQ", "[4, 4]", "MGD.UPDATE_SLOW_STEP", "[100]",
            "MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]"]
def _timing(name) -> bool:
    """A logged entry that measures time, not training: time, data_time, rank_data_time (today's
    Detectron2), eta_seconds, mgd/matching_seconds, the matching record's seconds."""
    return str(name).endswith(("time", "seconds"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The module's folder; its checkpoints (300 MB each for MGD) are deleted at the end."""
    root = tmp_path_factory.mktemp("resume")
    yield root
    for checkpoint in root.rglob("*.pth"):
        checkpoint.unlink()


@pytest.fixture(scope="module")
def data(workdir):
    return make_mixed_orientation_dataset(workdir / "data", train=24, val=4)


@pytest.fixture(scope="module")
def mgd_weights(workdir):
    """A random MGD model (teacher norms non-trivial) as MODEL.WEIGHTS."""
    import_overlay()
    from detectron2.modeling import build_model

    from mgd_reference import randomise_norms

    torch.manual_seed(0)
    model = build_model(load_cfg(workdir, MGD_DEMO, RUN + MATCHING))
    randomise_norms(model.t_net, 1)
    path = workdir / "initial.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


#: the kinds of run: config and its overrides ("mgd-rd": the reducer whose steps draw random numbers)
KINDS = {"mgd": (MGD_DEMO, MATCHING), "mgd-rd": (MGD_DEMO, MATCHING + ["MGD.REDUCER", "rd"]), "base": (R18_DEMO, [])}


def _args(workdir, kind, weights, processes):
    config, extra = KINDS[kind]
    opts = RUN + extra + (["MODEL.WEIGHTS", str(weights)] if weights else [])
    # (several processes: a free port, not upstream's fixed one, which a test beside this one may hold)
    ports = ["--dist-url", "auto"] if processes > 1 else []
    return ["--num-gpus", str(processes), *ports, "--config-file", config_dir(workdir) / config, *opts]


_straight_runs = {}


def straight_run(workdir, data, kind, weights, processes) -> Path:
    """The uninterrupted run (made once per kind and process count), loading in a worker."""
    key = (kind, processes)
    if key not in _straight_runs:
        out = workdir / f"straight-{kind}-{processes}"
        run_train_net([*_args(workdir, kind, weights, processes), "DATALOADER.NUM_WORKERS", "1",
                       "OUTPUT_DIR", out], data)
        _straight_runs[key] = out
    return _straight_runs[key]


def _lines(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def stopped_after(straight: Path, k: int, out: Path) -> Path:
    """``out``: the folder of a run that stopped after iteration k (see the module doc)."""
    out.mkdir()
    shutil.copy(straight / "config.yaml", out)
    shutil.copy(straight / f"model_{k:07d}.pth", out)
    (out / "last_checkpoint").write_text(f"model_{k:07d}.pth")
    for name in ("metrics.json", "mgd_matching.json"):
        kept = [line for line in _lines(straight / name) if line["iteration"] <= k]
        if kept:
            (out / name).write_text("".join(json.dumps(line) + "\n" for line in kept))
    return out


def resume(workdir, data, kind, weights, processes, out: Path):
    return run_train_net(["--resume", *_args(workdir, kind, weights, processes), "DATALOADER.NUM_WORKERS", "0",
                          "OUTPUT_DIR", out], data)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _differences(a, b, where=""):
    """Where two checkpoint entries (nested dicts/lists of tensors and numbers) differ, bit for
    bit; entries that measure time (:func:`_timing`) are left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys_a, keys_b = {k for k in a if not _timing(k)}, {k for k in b if not _timing(k)}
        if keys_a != keys_b:
            return [f"{where}: keys {sorted(keys_a ^ keys_b, key=str)}"]
        return [d for k in keys_a for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} entries"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) else [where]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]


def training_differences(straight: Path, resumed: Path, k: int):
    """Everything that differs between the two runs' final state and what they logged after k."""
    final_a, final_b = _load(straight / "model_final.pth"), _load(resumed / "model_final.pth")
    found = _differences(final_a, final_b, "model_final")
    logged_a = {m["iteration"]: m for m in _lines(straight / "metrics.json") if m["iteration"] > k}
    logged_b = {m["iteration"]: m for m in _lines(resumed / "metrics.json") if m["iteration"] > k}
    assert logged_a and set(logged_a) == set(logged_b), (sorted(logged_a), sorted(logged_b))
    for it, line in logged_a.items():
        found += _differences(line, logged_b[it], f"metrics.json@{it}")
    matchings_a = [(m["iteration"], m["assignment_digest"], m["costs"]) for m in _lines(straight / "mgd_matching.json")
                   if m["iteration"] > k]
    matchings_b = [(m["iteration"], m["assignment_digest"], m["costs"]) for m in _lines(resumed / "mgd_matching.json")
                   if m["iteration"] > k]
    found += _differences(matchings_a, matchings_b, "mgd_matching.json")
    return found


@pytest.mark.latest_pass
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("k", [5, 8])
def test_mgd_resumed_after_k_ends_as_the_uninterrupted_run(workdir, data, mgd_weights, processes, k):
    straight = straight_run(workdir, data, "mgd", mgd_weights, processes)
    out = stopped_after(straight, k, workdir / f"mgd-{processes}-after-{k}")
    resumed = resume(workdir, data, "mgd", mgd_weights, processes, out)
    assert f"Starting training from iteration {k + 1}" in resumed.stdout
    assert "Data stream restored: continues at batch" in resumed.stdout
    assert "MGD: continuing with the checkpoint's channel assignment" in resumed.stdout
    assert "margins recomputed at resume differ" not in resumed.stdout
    # the schedule's matchings only: 0, 4, 8, none of the resumed run's own at k + 1
    assert [m["iteration"] for m in _lines(out / "mgd_matching.json")] == [0, 4, 8]
    assert [m["iteration"] for m in _lines(straight / "mgd_matching.json")] == [0, 4, 8]
    assert training_differences(straight, out, k) == []
    # not trivially equal: the state after k differs from the final one
    assert _differences(_load(out / f"model_{k:07d}.pth")["model"], _load(out / "model_final.pth")["model"])


@pytest.mark.latest_pass
@pytest.mark.parametrize("processes", [1, 2])
def test_base_retinanet_resumed_after_k_ends_as_the_uninterrupted_run(workdir, data, processes):
    straight = straight_run(workdir, data, "base", None, processes)
    out = stopped_after(straight, 5, workdir / f"base-{processes}-after-5")
    resume(workdir, data, "base", None, processes, out)
    assert training_differences(straight, out, 5) == []


def test_a_step_that_draws_random_numbers_draws_the_same_after_a_resume(workdir, data, mgd_weights):
    """The RD reducer picks a random matched teacher channel per location at every step: the
    generators are reseeded per step, so the resumed steps draw what the uninterrupted ones did."""
    straight = straight_run(workdir, data, "mgd-rd", mgd_weights, 1)
    out = stopped_after(straight, 5, workdir / "mgd-rd-1-after-5")
    resume(workdir, data, "mgd-rd", mgd_weights, 1, out)
    assert training_differences(straight, out, 5) == []


@pytest.mark.parametrize("dropped, what", [
    ("data_stream", "the data stream restarted"),
    ("mgd_matching", "a matching of its own at its first iteration (the original's behaviour)"),
])
def test_a_resume_without_the_saved_state_is_caught(workdir, data, mgd_weights, dropped, what):
    """The comparison above is strict enough to see a resume that restarts the data stream, or
    that re-matches at its first iteration: the checkpoint stripped of that entry diverges."""
    straight = straight_run(workdir, data, "mgd", mgd_weights, 1)
    out = stopped_after(straight, 5, workdir / f"mgd-1-without-{dropped}")
    checkpoint = _load(out / "model_0000005.pth")
    del checkpoint[dropped]
    torch.save(checkpoint, out / "model_0000005.pth")
    resumed = resume(workdir, data, "mgd", mgd_weights, 1, out)
    found = training_differences(straight, out, 5)
    assert any(d.startswith("model_final.model.s_net.") for d in found), (what, found[:5])
    assert any(d.startswith("metrics.json@9.loss_") for d in found), (what, found[:5])
    if dropped == "mgd_matching":
        assert [m["iteration"] for m in _lines(out / "mgd_matching.json")] == [0, 4, 6, 8]
        assert "continuing with the checkpoint's channel assignment" not in resumed.stdout


def test_rematch_on_resume_is_the_originals_behaviour(workdir, data, mgd_weights):
    straight = straight_run(workdir, data, "mgd", mgd_weights, 1)
    out = stopped_after(straight, 5, workdir / "mgd-1-rematch")
    run_train_net(["--resume", *_args(workdir, "mgd", mgd_weights, 1), "MGD.REMATCH_ON_RESUME", "True",
                   "OUTPUT_DIR", out], data)
    assert [m["iteration"] for m in _lines(out / "mgd_matching.json")] == [0, 4, 6, 8]


def test_a_resume_with_another_process_count_continues_after_as_many_images(workdir, data, mgd_weights):
    """Saved with one process (batches of 4), resumed with two (2 each): the position cannot name
    the same images; the stream goes on after the 32 images read (8 batches of 4: steps 0-5 and
    the matchings at 0 and 4, one batch each), with one warning line."""
    straight = straight_run(workdir, data, "mgd", mgd_weights, 1)
    out = stopped_after(straight, 5, workdir / "mgd-1-then-2")
    resumed = resume(workdir, data, "mgd", mgd_weights, 2, out)
    assert ("the saved data stream is for 1 process x 4 images, grouped by orientation, this run's for 2 processes "
            "x 2 images, grouped by orientation: the data stream continues after the same number of images (32)"
            ) in resumed.stdout
    assert "every process resumes from rank 0's" in resumed.stdout
    # batch 32 / (2 x 2) = 8 of the new layout, then steps 6-9 and the matching at 8 (one batch)
    assert _load(out / "model_final.pth")["data_stream"]["batches"] == 8 + 4 + 1


@pytest.mark.latest_pass
@pytest.mark.parametrize("processes", [1, 2])
def test_ctrl_c_and_the_printed_command_end_as_the_uninterrupted_run(workdir, data, mgd_weights, processes):
    """A real Ctrl-C (SIGINT to the process group, as a terminal sends it) wherever it lands in
    iterations 2-6, then the command the run printed, run as printed in a new shell."""
    straight = straight_run(workdir, data, "mgd", mgd_weights, processes)
    out = workdir / f"mgd-{processes}-ctrl-c"
    cmd = [sys.executable, str(REPO / "train_net.py"), *map(str, synthetic_dataset_args(data)),
           *map(str, _args(workdir, "mgd", mgd_weights, processes)), "DATALOADER.NUM_WORKERS", "1",
           "OUTPUT_DIR", str(out)]
    code, output, _ = interrupt(cmd, after_iterations=2)
    assert code == 130, output[-3000:]
    match = SAVED.search(output)
    assert match, output[-3000:]
    step, command = int(match.group(2)), match.group(6)
    assert 0 <= step < MAX_ITER - 1, output[-3000:]  # stopped before its end, wherever
    words = shlex.split(command)
    assert words[:3] == ["python", str(REPO / "train_net.py"), "--resume"], words
    resumed = subprocess.run(["bash", "-c", command.replace("python ", f"{shlex.quote(sys.executable)} ", 1)],
                             cwd=REPO, env=detectron2_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"Starting training from iteration {step + 1}" in resumed.stdout
    assert training_differences(straight, out, step) == []
