"""`make demo DETECTOR=faster_rcnn`, shortened: the demo's chain for a two-stage detector through
the same make targets (Faster R-CNN teacher and student configs, the two-stage MGD config, make's
folder names), down to the AP and matched-cost tables."""
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
pytest.importorskip("detectron2.modeling", reason="Detectron2 not built here (run `make detectron2`)")

REPO_ROOT = Path(__file__).resolve().parents[2]
SHORT_RUN = "SOLVER.MAX_ITER 4 MGD.UPDATE_ITER 2 MGD.UPDATE_FREQ [2,4] MGD.UPDATE_SLOW_STEP [2]"
EVAL_ALL = "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0"  # after 4 iterations: keep every detection


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    demo_dir = tmp_path_factory.mktemp("chain") / "demo"
    env = dict(os.environ, DEMO_OPTS=SHORT_RUN, DEMO_DATA_ARGS="--train 12 --val 6", DEMO_EVAL_OPTS=EVAL_ALL)
    run = subprocess.run(["make", "--no-print-directory", "demo", f"DEMO_DIR={demo_dir}", "DETECTOR=faster_rcnn"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return demo_dir, run.stdout


def test_the_two_stage_chain_reaches_the_tables(demo):
    demo_dir, stdout = demo
    results = json.loads((demo_dir / "results.json").read_text())
    for name in ("teacher", "student", "mgd"):
        assert all(math.isfinite(results[name][k]) for k in ("AP", "AP50", "AP75")), name
    assert list(results["matched_cost"]) == ["student", "mgd"]
    assert list(results["matched_cost"]["mgd"]) == ["c2", "c3", "c4", "c5"]
    assert "Mean matched cost to the teacher" in stdout


def test_every_step_trained_a_faster_rcnn(demo):
    demo_dir, _ = demo
    teacher = demo_dir / "base-faster_rcnn-R50"
    student = demo_dir / "seed1" / "base-faster_rcnn-R18"
    for run, config in ((teacher, "demo_faster_rcnn_R_50.yaml"), (student, "demo_faster_rcnn_R_18.yaml"),
                        (demo_dir / "seed1" / "mgd", "demo_mgd_faster_rcnn_R50_R18.yaml")):
        assert (run / "model_final.pth").is_file(), run
        assert config in (run / "log.txt").read_text(), (run, config)
    import torch

    weights = torch.load(demo_dir / "seed1" / "mgd" / "model_final.pth", map_location="cpu", weights_only=False)
    keys = weights["model"].keys()
    # both networks are two-stage detectors: RPN and ROI heads under t_net. and s_net.
    for net in ("t_net", "s_net"):
        assert any(k.startswith(f"{net}.proposal_generator.") for k in keys), net
        assert any(k.startswith(f"{net}.roi_heads.box_predictor.") for k in keys), net
    cost = json.loads((demo_dir / "seed1" / "matched_cost_student.json").read_text())
    assert cost["teacher"] == str(teacher / "model_final.pth") and cost["images"] == 6


def test_an_unknown_detector_is_one_error_line_before_anything_runs(tmp_path):
    run = subprocess.run(["make", "--no-print-directory", "demo", f"DEMO_DIR={tmp_path / 'demo'}", "DETECTOR=mask_rcnn"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "DETECTOR must be retinanet or faster_rcnn" in errors[0], run.stderr
    assert not (tmp_path / "demo").exists()
