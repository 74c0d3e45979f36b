"""train_net.py end to end on CPU: train, resume, split + eval-only, probe, 2 gloo processes."""
import json
import re

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="pinned Detectron2 not built here (run `make detectron2`)")
# the checkout folder alone is an empty namespace package "detectron2": need the real one
pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable (run `make detectron2`)")

from test_d2_support import REPO, TINY_INPUT, config_dir, make_synthetic_dataset, run_train_net  # noqa: E402

AP_LINE = re.compile(r"copypaste: ([-\d.nan]+),([-\d.nan]+),([-\d.nan]+),")
FAST_MGD = TINY_INPUT + [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "MGD.UPDATE_ITER", "2",
    "MGD.UPDATE_FREQ", "[100, 100]", "MGD.UPDATE_SLOW_STEP", "[100]",
    "MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]",
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_64")


def _matchings(out):
    path = out / "mgd_matching.json"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _ap(text):
    found = AP_LINE.findall(text)
    assert found, "no COCO AP line printed:\n" + text[-3000:]
    return [float(x) for x in found[-1]]


@pytest.mark.slow
def test_train_resume_split_eval_and_probe(tmp_path, synth):
    cfg = config_dir(tmp_path) / "demo_mgd_R50_R18.yaml"
    out = tmp_path / "mgd"
    opts = FAST_MGD + ["OUTPUT_DIR", out, "DATASETS.TEST", "()"]

    # a run that stops after 2 iterations (its checkpoint records iteration 1)
    run_train_net(["--config-file", cfg, *opts, "SOLVER.MAX_ITER", "2"], synth)
    assert [m["iteration"] for m in _matchings(out)] == [0]
    assert (out / "config.yaml").exists() and "MGD:" in (out / "config.yaml").read_text()

    # --resume continues at the next iteration and rebuilds margins and matching there
    proc = run_train_net(["--resume", "--config-file", cfg, *opts, "SOLVER.MAX_ITER", "4"], synth)
    assert "Starting training from iteration 2" in proc.stdout
    assert "margins computed from the teacher's norms at iteration 2" in proc.stdout
    assert [m["iteration"] for m in _matchings(out)] == [0, 2]

    # split the student out and evaluate it; the teacher straight from the .pth
    pkl = out / "model_final.pkl"
    import subprocess
    import sys

    subprocess.run([sys.executable, REPO / "scripts" / "convert-output-to-d2.py", out / "model_final.pth", pkl],
                   check=True, cwd=REPO)
    eval_opts = TINY_INPUT + ["OUTPUT_DIR", tmp_path / "eval"]
    proc = run_train_net(["--eval-only", "--config-file", cfg, "MODEL.WEIGHTS", pkl, *eval_opts], synth)
    assert len(_ap(proc.stdout)) == 3
    assert "Evaluating the student" in proc.stdout
    assert "not found in the checkpoint" not in proc.stdout  # every student tensor loaded
    proc = run_train_net(["--eval-only", "--eval-teacher", "--config-file", cfg,
                          "MODEL.WEIGHTS", out / "model_final.pth", *eval_opts], synth)
    assert len(_ap(proc.stdout)) == 3 and "Evaluating the teacher" in proc.stdout
    assert "not found in the checkpoint" not in proc.stdout

    # the loss-factor probe
    suggestion = tmp_path / "factors.txt"
    proc = run_train_net(["--probe-loss-factors", "--probe-matching-batches", "2", "--probe-output", suggestion,
                          "--config-file", cfg, *opts, "MODEL.WEIGHTS", out / "model_final.pth"], synth)
    assert re.search(r"^c2\s+5e\+07\s+[\d.e+-]+\s+[\d.e+-]+$", proc.stdout, re.M), proc.stdout[-2000:]
    line = suggestion.read_text().strip()
    assert line.startswith("MGD.LOSS_FACTORS [")
    factors = json.loads(line.split(" ", 1)[1])
    assert len(factors) == 9 and factors[3:] == [5e6, 5e7, 5e7, 5e5, 0.0, 0.0]


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_matchings(tmp_path, synth):
    cfg = config_dir(tmp_path) / "demo_mgd_R50_R18.yaml"
    out = tmp_path / "ddp"
    run_train_net(["--num-gpus", "2", "--dist-url", "auto", "--config-file", cfg, *FAST_MGD,
                   "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out, "DATASETS.TEST", "()"], synth)
    digests = {}
    for log in (out / "log.txt", out / "log.txt.rank1"):
        found = re.findall(r"\(rank (\d), assignment digest (\w+)\); mean matched cost: (.*)", log.read_text())
        assert len(found) == 1, log
        digests[found[0][0]] = found[0][1:]
    assert set(digests) == {"0", "1"}
    assert digests["0"][0] == digests["1"][0]  # same assignment on both ranks (rank 0's)
    assert digests["0"][1] != digests["1"][1]  # though each rank saw its own batches
    assert (out / "model_final.pth").exists()


@pytest.mark.slow
def test_plain_retinanet_trains_and_evaluates_through_train_net(tmp_path, synth):
    cfg = config_dir(tmp_path) / "demo_retinanet_R_18.yaml"
    proc = run_train_net(["--config-file", cfg, *TINY_INPUT, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                          "OUTPUT_DIR", tmp_path / "r18"], synth)
    assert len(_ap(proc.stdout)) == 3
    assert (tmp_path / "r18" / "model_final.pth").exists()
    assert not (tmp_path / "r18" / "mgd_matching.json").exists()
