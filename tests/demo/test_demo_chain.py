"""`make demo`, shortened: every step of the chain runs through the real make targets and
scripts (data, random-init weights via the pin's converter, base R50 teacher, merge, probe, and
for two seeds the base R18 student, distillation, convert-all, evaluations and matched costs,
then the teacher's evaluation, the results tables and the plots) on a tiny budget."""
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
pytest.importorskip("detectron2.modeling", reason="Detectron2 not built here (run `make detectron2`)")

REPO_ROOT = Path(__file__).resolve().parents[2]
SHORT_RUN = "SOLVER.MAX_ITER 4 MGD.UPDATE_ITER 2 MGD.UPDATE_FREQ [2,4] MGD.UPDATE_SLOW_STEP [2]"
# After 4 iterations no score reaches the usual 0.05: keep every detection so AP is a number.
EVAL_ALL = "MODEL.RETINANET.SCORE_THRESH_TEST 0.0"
POSITIONS = ["c2", "c3", "c4", "c5"]  # demo_mgd_R50_R18.yaml distils c2-c5 (IGNORE_INDS 4-8)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    demo_dir = tmp_path_factory.mktemp("chain") / "demo"
    env = dict(os.environ, DEMO_OPTS=SHORT_RUN, DEMO_DATA_ARGS="--train 16 --val 8",
               DEMO_EVAL_OPTS=EVAL_ALL)
    run = subprocess.run(
        ["make", "--no-print-directory", "demo", f"DEMO_DIR={demo_dir}", "SEEDS=2"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return demo_dir, run.stdout


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_results_table_has_finite_ap_over_seeds(demo):
    demo_dir, stdout = demo
    results = json.loads((demo_dir / "results.json").read_text())
    assert list(results)[:3] == ["teacher", "student", "mgd"]
    for name in ("teacher", "student", "mgd"):
        for key in ("AP", "AP50", "AP75"):
            assert _finite(results[name][key]) and 0.0 <= results[name][key] <= 100.0, (name, key)
    for name in ("student", "mgd"):  # two seeds: mean, spread and both runs
        assert results[name]["n"] == 2 and len(results[name]["runs"]) == 2
        assert _finite(results[name]["std"]["AP"])
        assert results[name]["AP"] == pytest.approx(sum(r["AP"] for r in results[name]["runs"]) / 2)
    assert "MGD - student" in stdout and "student (2 runs)" in stdout


def test_matched_cost_table_is_there_and_well_formed(demo):
    demo_dir, stdout = demo
    results = json.loads((demo_dir / "results.json").read_text())
    costs = results["matched_cost"]
    assert list(costs) == ["student", "mgd"]
    for name in ("student", "mgd"):
        assert list(costs[name]) == POSITIONS
        # 2 - 2 cos lies in [0, 4]
        assert all(_finite(v) and 0.0 <= v <= 4.0 for v in costs[name].values()), costs[name]
        assert list(results["matched_cost_std"][name]) == POSITIONS
        assert len(results["matched_cost_runs"][name]) == 2
    for seed in (1, 2):
        for name, student in (("student", "base-R18/model_final.pth"), ("mgd", "mgd/model_final.pth")):
            measured = json.loads((demo_dir / f"seed{seed}" / f"matched_cost_{name}.json").read_text())
            assert measured["images"] == 8 and measured["dataset"] == "mgd_synth_val"
            assert measured["teacher"] == str(demo_dir / "base-R50" / "model_final.pth")
            assert measured["student"] == str(demo_dir / f"seed{seed}" / student)
    table = stdout[stdout.index("Mean matched cost to the teacher"):].splitlines()
    assert table[1].split() == ["position", "student", "mgd", "mgd", "vs", "student"]
    assert [row.split()[0] for row in table[2:6]] == POSITIONS
    assert (demo_dir / "plots" / "matched_cost_to_teacher.png").stat().st_size > 1000


def test_teacher_is_the_trained_one(demo):
    """The teacher evaluated and distilled from holds the base R50 run's final weights, not the
    random initialisation it started from."""
    from mgd.checkpoint import load_checkpoint, to_numpy

    def arrays(path):
        return {k: to_numpy(v) for k, v in load_checkpoint(path).items()}

    demo_dir, _ = demo
    trained = arrays(demo_dir / "base-R50" / "model_final.pth")
    initial = arrays(demo_dir / "weights" / "r-50.pkl")
    for seed in (1, 2):
        merged = arrays(demo_dir / f"seed{seed}" / "mgd" / "model_final.pth")
        teacher = {k[len("t_net."):]: v for k, v in merged.items() if k.startswith("t_net.")}
        assert set(teacher) == set(trained)
        for key, value in trained.items():
            assert (teacher[key] == value).all(), key
    convs = [k for k in initial if k.endswith("conv1.weight")]
    assert convs
    changed = [k for k in convs if not (trained["backbone.bottom_up." + k] == initial[k]).all()]
    assert len(changed) == len(convs), sorted(set(convs) - set(changed))
    evaluated = yaml.safe_load((demo_dir / "eval" / "teacher" / "config.yaml").read_text())
    assert evaluated["MODEL"]["WEIGHTS"] == str(demo_dir / "seed1" / "mgd" / "model_final.pth")


def test_distillation_ran_with_the_probed_factors(demo):
    demo_dir, _ = demo
    # The distillation really distilled: its loss was logged, it matched at the first
    # iteration, and the last matching's costs reached metrics.json (the pinned event storage
    # forgets a scalar after its step, so the hook has to repeat them).
    mgd = demo_dir / "seed1" / "mgd"
    lines = [json.loads(line) for line in (mgd / "metrics.json").read_text().splitlines()]
    assert any("loss_distill" in line for line in lines)
    matchings = [json.loads(line) for line in (mgd / "mgd_matching.json").read_text().splitlines()]
    assert matchings[0]["iteration"] == 0
    last = matchings[-1]["iteration"]
    assert any(line.get("mgd/matching_iter") == last and "mgd/cost_c2" in line for line in lines)
    factors = (demo_dir / "loss_factors.txt").read_text().split(maxsplit=1)
    assert factors[0] == "MGD.LOSS_FACTORS"
    for seed in (1, 2):
        saved = yaml.safe_load((demo_dir / f"seed{seed}" / "mgd" / "config.yaml").read_text())
        assert saved["MGD"]["LOSS_FACTORS"] == pytest.approx(json.loads(factors[1]))
        assert saved["SEED"] == seed
        # a fair comparison: the plain student differs from the MGD student only by distillation
        plain = yaml.safe_load((demo_dir / f"seed{seed}" / "base-R18" / "config.yaml").read_text())
        assert plain["SEED"] == seed
        for key in ("MAX_ITER", "STEPS", "BASE_LR", "IMS_PER_BATCH", "WARMUP_ITERS", "AMP"):
            assert plain["SOLVER"].get(key) == saved["SOLVER"].get(key), key
        assert plain["INPUT"] == saved["INPUT"] and plain["DATASETS"] == saved["DATASETS"]
        resnets = plain["MODEL"]["RESNETS"]
        student = saved["MGD"]["STUDENT"]
        assert (resnets["DEPTH"], resnets["STAGE_LAST_NORM"], plain["MODEL"]["BACKBONE"]["FREEZE_AT"]) \
            == (student["DEPTH"], student["STAGE_LAST_NORM"], student["FREEZE_AT"])

    # convert-all split every checkpoint; the plots were drawn.
    assert (mgd / "model_final.pkl").stat().st_size > 0
    for plot in ("loss_curves.png", "matching_cost.png", "ap_comparison.png"):
        assert (demo_dir / "plots" / plot).stat().st_size > 1000


def test_matched_cost_refuses_a_wrong_teacher(demo, tmp_path):
    """The R18 student given as the teacher: one error line, no output file."""
    import sys

    demo_dir, _ = demo
    data = demo_dir / "data"
    out = tmp_path / "cost.json"
    run = subprocess.run(
        [sys.executable, "scripts/measure_matched_cost.py", "--config-file", "configs/demo_mgd_R50_R18.yaml",
         "--dataset", "mgd_synth_val", str(data / "annotations" / "instances_val.json"), str(data / "val"),
         "--teacher", str(demo_dir / "seed1" / "base-R18" / "model_final.pth"),
         "--student", str(demo_dir / "seed1" / "base-R18" / "model_final.pth"), "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("error: teacher checkpoint") and "is ResNet-18" in error, error
    assert "but the teacher being evaluated is ResNet-50; pass the teacher's checkpoint" in error, error
    assert not out.exists()
