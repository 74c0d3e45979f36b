"""train_net.py end to end on CPU: train, resume, split + eval-only, probe, 2 gloo processes."""
import json
import re

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="Detectron2 not built here (run `make detectron2`)")
# the checkout folder alone is an empty namespace package "detectron2": need the real one
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

from d2_support import (  # noqa: E402
    REPO,
    TINY_INPUT,
    config_dir,
    import_overlay,
    load_cfg,
    make_synthetic_dataset,
    run_train_net,
)

AP_LINE = re.compile(r"copypaste: ([-\d.nan]+),([-\d.nan]+),([-\d.nan]+),")
FAST_MGD = TINY_INPUT + [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "MGD.UPDATE_ITER", "2",
    "MGD.UPDATE_FREQ", "[100, 100]", "MGD.UPDATE_SLOW_STEP", "[100]",
    "MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]",
]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_64")


@pytest.fixture(scope="module")
def random_mgd_weights(tmp_path_factory):
    """A randomly initialised MGD model (teacher and student) saved as MODEL.WEIGHTS: an MGD
    run refuses to start without weights."""
    import torch

    import_overlay()
    from detectron2.modeling import build_model

    root = tmp_path_factory.mktemp("random_mgd")
    torch.manual_seed(0)
    model = build_model(load_cfg(root, "demo_mgd_R50_R18.yaml"))
    torch.save({"model": model.state_dict()}, root / "weights.pth")
    return root / "weights.pth"


def _matchings(out):
    path = out / "mgd_matching.json"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _probed(text):
    """{position: (factor, loss/(factor*divisor), suggested factor)} from the probe's table."""
    rows = re.findall(r"^([cp]\d)\s+([\d.e+-]+)\s+([\d.e+-]+)\s+([\d.e+-]+)$", text, re.M)
    return {name: tuple(map(float, values)) for name, *values in rows}


def _ap(text):
    found = AP_LINE.findall(text)
    assert found, "no COCO AP line printed:\n" + text[-3000:]
    return [float(x) for x in found[-1]]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, synth, random_mgd_weights):
    """An MGD run of 2 iterations (its checkpoint records iteration 1), then ``--resume`` to 4:
    (config, overrides, output folder, the resumed process's output)."""
    root = tmp_path_factory.mktemp("resumed_run")
    cfg = config_dir(root) / "demo_mgd_R50_R18.yaml"
    out = root / "mgd"
    opts = FAST_MGD + ["OUTPUT_DIR", out, "DATASETS.TEST", "()", "MODEL.WEIGHTS", random_mgd_weights]
    run_train_net(["--config-file", cfg, *opts, "SOLVER.MAX_ITER", "2"], synth)
    first = {"matchings": _matchings(out), "config": (out / "config.yaml").read_text()}
    proc = run_train_net(["--resume", "--config-file", cfg, *opts, "SOLVER.MAX_ITER", "4"], synth)
    return cfg, opts, out, first, proc.stdout


def _evaluation(folder):
    return json.loads((folder / "eval_results.json").read_text())


@pytest.mark.slow
@pytest.mark.latest_pass
def test_a_run_records_its_config_and_its_matching(resumed_run):
    _, _, _, first, _ = resumed_run
    assert [m["iteration"] for m in first["matchings"]] == [0]
    assert "MGD:" in first["config"]


@pytest.mark.slow
@pytest.mark.latest_pass
def test_resume_continues_with_the_checkpoints_assignment(resumed_run):
    """--resume continues at the next iteration, with the matching the checkpoint holds (no new
    line in mgd_matching.json) and the margins recomputed from the frozen teacher."""
    _, _, out, _, log = resumed_run
    assert [m["iteration"] for m in _matchings(out)] == [0]
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert "Starting training from iteration 2" in log  # Detectron2's: a resume, not a restart
    assert "margins computed from the teacher's norms at iteration 2" in log  # no file holds this


@pytest.mark.slow
@pytest.mark.latest_pass
def test_the_split_student_and_the_teacher_evaluate(tmp_path, synth, resumed_run):
    """The student split out (the original's convert-output-to-d2.py) and the teacher straight
    from the .pth evaluate, each named in its results file."""
    import subprocess
    import sys

    cfg, _, out, _, _ = resumed_run
    pkl = tmp_path / "model_final.pkl"
    subprocess.run([sys.executable, REPO / "scripts" / "convert-output-to-d2.py", out / "model_final.pth", pkl],
                   check=True, cwd=REPO)
    for network, weights, flags in (("student", pkl, []), ("teacher", out / "model_final.pth", ["--eval-teacher"])):
        folder = tmp_path / f"eval-{network}"
        run_train_net(["--eval-only", *flags, "--config-file", cfg, "MODEL.WEIGHTS", weights,
                       *TINY_INPUT, "OUTPUT_DIR", folder], synth)
        results = _evaluation(folder)
        assert results["provenance"]["network"] == network
        assert results["provenance"]["weights"]["path"] == str(weights)
        assert {"AP", "AP50", "AP75"} <= set(results["bbox"]), results


@pytest.mark.slow
@pytest.mark.latest_pass
def test_the_probe_suggests_factors_for_the_distilled_positions(tmp_path, synth, resumed_run):
    """The loss-factor probe: each loss after its factor and the divisor training uses; the
    suggestion file holds nine factors, the ignored positions' kept."""
    cfg, opts, out, _, _ = resumed_run
    suggestion = tmp_path / "factors.txt"
    probe = ["--probe-loss-factors", "--probe-matching-batches", "2", "--config-file", cfg, *opts,
             "OUTPUT_DIR", tmp_path / "probe", "MODEL.WEIGHTS", out / "model_final.pth"]
    proc = run_train_net(["--probe-output", suggestion, *probe], synth)
    assert "distillation divisor 16 (IMS_PER_BATCH 2 x MGD.REFERENCE_WORLD_SIZE 8 / 1 processes)" in proc.stdout
    first = _probed(proc.stdout)
    assert set(first) == {"c2", "c3", "c4"} and first["c2"][0] == 5e7, proc.stdout[-2000:]
    line = suggestion.read_text().strip()
    assert line.startswith("MGD.LOSS_FACTORS [")
    factors = json.loads(line.split(" ", 1)[1])
    assert len(factors) == 9 and factors[3:] == [5e6, 5e7, 5e7, 5e5, 0.0, 0.0]


@pytest.mark.slow
@pytest.mark.latest_pass
def test_two_gloo_processes_end_with_identical_matchings(tmp_path, synth, random_mgd_weights):
    """Two processes on one machine: the divisor counts both (2 x 8 / 2 = 8), and each matching
    is solved from both ranks' images ((7 + 1) x 2 / 8 = 2: one batch, one image per rank)."""
    cfg = config_dir(tmp_path) / "demo_mgd_R50_R18.yaml"
    out = tmp_path / "ddp"
    run_train_net(["--num-gpus", "2", "--dist-url", "auto", "--config-file", cfg, *FAST_MGD, "MGD.UPDATE_ITER", "7",
                   "MODEL.WEIGHTS", random_mgd_weights, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out, "DATASETS.TEST", "()"], synth)
    digests = {}
    for log in (out / "log.txt", out / "log.txt.rank1"):
        text = log.read_text()
        assert "x MGD.REFERENCE_WORLD_SIZE 8 / 2 processes = 8:" in text, log
        assert "each matching draws 1 batches per process and is solved from" in text, log
        found = re.findall(r"solved from (.*), 1 batches per rank \(rank (\d), assignment digest (\w+)\); "
                           r"mean matched cost: (.*)", text)
        assert len(found) == 1, log
        digests[found[0][1]] = (found[0][0], *found[0][2:])
    assert set(digests) == {"0", "1"}
    assert digests["0"][0].startswith("2 images from ranks 0-1 of 2")
    assert digests["0"] == digests["1"]  # same statistic, assignment and costs on both ranks
    assert (out / "model_final.pth").exists()


@pytest.mark.slow
def test_plain_retinanet_trains_and_evaluates_through_train_net(tmp_path, synth):
    cfg = REPO / "configs" / "demo_retinanet_R_18.yaml"  # as given, run from another folder
    proc = run_train_net(["--config-file", cfg, *TINY_INPUT, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                          "OUTPUT_DIR", tmp_path / "r18"], synth, cwd=tmp_path)
    assert len(_ap(proc.stdout)) == 3
    assert (tmp_path / "r18" / "model_final.pth").exists()
    assert not (tmp_path / "r18" / "mgd_matching.json").exists()

    # an evaluation that predicts nothing says so, and its results file is strict JSON
    proc = run_train_net(["--eval-only", "--config-file", cfg, *TINY_INPUT, "MODEL.WEIGHTS",
                          tmp_path / "r18" / "model_final.pth", "MODEL.RETINANET.SCORE_THRESH_TEST", "1.01",
                          "OUTPUT_DIR", tmp_path / "none"], synth, cwd=tmp_path)
    notes = [line for line in proc.stdout.splitlines() if "no predictions on mgd_synth_val" in line]
    assert len(notes) == 1 and "SCORE_THRESH_TEST 1.01" in notes[0], proc.stdout[-3000:]
    text = (tmp_path / "none" / "eval_results.json").read_text()
    results = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text}"))
    assert results["bbox"]["AP"] is None and set(results["bbox"].values()) == {None}


@pytest.mark.slow
def test_periodic_evaluation_during_distillation_changes_nothing_in_the_training(tmp_path, synth, random_mgd_weights):
    """``TEST.EVAL_PERIOD`` (the original's 5000; the README says how to turn it on): evaluations
    in the middle of an MGD run come back to training mode with the teacher still in eval mode,
    and the run ends with the weights of the same run evaluated at its end only."""
    import torch

    cfg = REPO / "configs" / "demo_mgd_R50_R18.yaml"
    common = ["--config-file", cfg, *FAST_MGD, "SOLVER.MAX_ITER", "4", "MODEL.WEIGHTS", random_mgd_weights]
    runs = {}
    for period in (0, 2):
        out = tmp_path / f"period{period}"
        proc = run_train_net([*common, "TEST.EVAL_PERIOD", period, "OUTPUT_DIR", out], synth, cwd=tmp_path)
        runs[period] = (torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"],
                        len(AP_LINE.findall(proc.stdout)), proc.stdout)
    assert runs[0][1] == 1 and runs[2][1] == 2  # at the end only / after iterations 2 and 4
    final_only, periodic = runs[0][0], runs[2][0]
    assert final_only.keys() == periodic.keys()
    changed = [k for k in final_only if not torch.equal(final_only[k], periodic[k])]
    assert not changed, changed[:5]
