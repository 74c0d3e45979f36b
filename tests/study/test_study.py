"""``make study`` at tiny size (tests/study/tiny_protocol.yaml: a few images and iterations, two
seeds): the command writes results.json with the paired intervals; the control arm trains the
plain student bit for bit; the fixed assignment is drawn once and never re-solved; Ctrl-C and
the same command continue the study and give the numbers of the uninterrupted one."""
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import REPO  # noqa: E402
from interrupt_support import interrupt  # noqa: E402
from scripts_support import run_make  # noqa: E402

PROTOCOL = Path(__file__).with_name("tiny_protocol.yaml")


def _study(out: Path, check=True) -> subprocess.CompletedProcess:
    proc = run_make("study", f"STUDY_PROTOCOL={PROTOCOL}", f"STUDY_DIR={out}", timeout=1800)
    if check:
        assert proc.returncode == 0, proc.stdout[-5000:]
    return proc


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "tiny"
    proc = _study(out)
    yield out, proc
    for checkpoint in out.rglob("*.pth"):  # (the module's folder keeps only what the tests read)
        if checkpoint.name != "model_final.pth":
            checkpoint.unlink()


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_the_study_writes_every_arm_every_seed_and_the_paired_intervals(study):
    out, proc = study
    results = _results(out)
    assert set(results) >= {"teacher", "arms", "protocol", "wall_seconds", "machine"}
    assert set(results["teacher"]) == {"AP", "AP50", "AP75"}
    arms = results["arms"]
    assert list(arms) == ["plain", "mgd", "control", "fixed_assignment", "factors_x0.25", "factors_x4"]
    for name, seeds in (("plain", 2), ("mgd", 2), ("control", 2), ("fixed_assignment", 2), ("factors_x0.25", 1)):
        entry = arms[name]
        assert entry["seeds"] == list(range(1, seeds + 1))
        for metric in ("AP", "AP50", "AP75"):
            assert len(entry[metric]) == seeds and all(isinstance(v, float) for v in entry[metric])
        # every run's own evaluation is what the table holds
        for seed, ap in zip(entry["seeds"], entry["AP"]):
            evaluation = json.loads((out / f"seed{seed}" / name / "eval" / "eval_results.json").read_text())
            assert evaluation["bbox"]["AP"] == ap
    mgd, plain = arms["mgd"], arms["plain"]
    differences = [m - p for m, p in zip(mgd["AP"], plain["AP"])]
    vs = mgd["vs_plain"]
    assert vs["differences"] == pytest.approx(differences) and vs["seeds"] == [1, 2]
    assert vs["mean"] == pytest.approx(sum(differences) / 2)
    assert len(vs["ci95"]) == 2 and vs["ci95"][0] <= vs["mean"] <= vs["ci95"][1]
    assert arms["factors_x4"]["vs_plain"]["ci95"] is None  # one seed: a difference, no interval
    assert "plain" in (out / "tables.md").read_text() and (out / "plots" / "difference_vs_plain.png").stat().st_size
    assert "[study] results:" in proc.stdout and "ETA" in proc.stdout
    plain_mean = sum(arms["plain"]["AP"]) / len(arms["plain"]["AP"])
    assert results["teacher_lead"]["AP"] == pytest.approx(results["teacher"]["AP"] - plain_mean)
    # the exploratory arm: apart from the pre-registered ones, compared with plain the same way
    grad_norms = results["exploratory"]["grad_norms"]
    assert grad_norms["seeds"] == [1] and grad_norms["vs_plain"]["differences"] == pytest.approx(
        [grad_norms["AP"][0] - plain["AP"][0]])
    logged = [json.loads(x) for x in (out / "seed1" / "grad_norms" / "metrics.json").read_text().splitlines()]
    assert any("mgd/grad_norm_distill" in r for r in logged)
    assert "grad_norms (exploratory)" in (out / "tables.md").read_text()
    assert (out / "plots" / "distillation_diagnostics.png").stat().st_size


def test_the_control_trains_the_plain_student_bit_for_bit(study):
    """Weighted 0, the distillation changes nothing: same weights, same AP, per seed. (A
    distillation gradient left in the control, or matching passes that took the plain
    student's batches, would change the weights.)"""
    out, _ = study
    results = _results(out)
    assert results["arms"]["control"]["AP"] == results["arms"]["plain"]["AP"][:2]
    for seed in (1, 2):
        control = torch.load(out / f"seed{seed}" / "control" / "model_final.pth", weights_only=True)["model"]
        plain = torch.load(out / f"seed{seed}" / "plain" / "model_final.pth", weights_only=True)["model"]
        assert plain and all(torch.equal(control["s_net." + k], v) for k, v in plain.items())
    # not trivially: the distillation trains the MGD arm's student away from the plain one's
    mgd = torch.load(out / "seed1" / "mgd" / "model_final.pth", weights_only=True)["model"]
    plain = torch.load(out / "seed1" / "plain" / "model_final.pth", weights_only=True)["model"]
    assert any(not torch.equal(mgd["s_net." + k], v) for k, v in plain.items())
    # and the control computed the distillation loss and ran its matchings
    metrics = [json.loads(x) for x in (out / "seed1" / "control" / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["mgd/loss_distill_untrained"] > 0 and metrics[-1]["loss_distill"] == 0
    matchings = (out / "seed1" / "control" / "mgd_matching.json").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in matchings] == [0, 3]


def test_the_fixed_assignment_is_drawn_once_and_never_re_solved(study):
    out, _ = study
    for seed in (1, 2):
        run = out / f"seed{seed}" / "fixed_assignment"
        records = [json.loads(x) for x in (run / "mgd_matching.json").read_text().splitlines()]
        assert [(r["iteration"], r["assignment"]) for r in records] == [(0, "random")]
        final = torch.load(run / "model_final.pth", weights_only=True)["mgd_matching"]
        assert final["record"]["assignment_digest"] == records[0]["assignment_digest"]
        matched = torch.load(out / f"seed{seed}" / "mgd" / "model_final.pth", weights_only=True)["mgd_matching"]
        assert any(not torch.equal(final["assignments"][k], matched["assignments"][k]) for k in final["assignments"])
    first, second = (torch.load(out / f"seed{s}" / "fixed_assignment" / "model_final.pth",
                                weights_only=True)["mgd_matching"]["assignments"] for s in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)  # drawn from each seed


def test_ctrl_c_then_the_same_command_gives_the_uninterrupted_study(study, tmp_path):
    """The study is stopped by Ctrl-C during its last trainings (the folder of the finished one,
    less seed 2's last arms), then run again: it does only what is left, and its results equal
    the uninterrupted study's, to the last digit."""
    out, _ = study
    copy = tmp_path / "tiny"
    shutil.copytree(out, copy)
    for name in ("results.json", "tables.md"):
        (copy / name).unlink()
    for arm in ("control", "fixed_assignment"):
        shutil.rmtree(copy / "seed2" / arm)
    cmd = ["make", "--no-print-directory", "-C", str(REPO), "study", f"STUDY_PROTOCOL={PROTOCOL}",
           f"STUDY_DIR={copy}", f"PYTHON={sys.executable}"]
    code, output, finished = interrupt(cmd, after_iterations=2)  # seed 2's control, 2 of its 6 iterations done
    assert finished is not None, output[-3000:]
    # (make, Ctrl-C'd too, ends by the signal after its recipe's 130)
    assert code in (130, -signal.SIGINT) and "the same command continues the study" in output, output[-3000:]
    assert "interrupted: saved" in output  # the training kept what it had done
    assert "train control, seed 2" in output and not (copy / "results.json").exists()
    again = _study(copy)
    assert "already done" in again.stdout
    assert _results(copy)["arms"] == _results(out)["arms"]
    assert _results(copy)["teacher"] == _results(out)["teacher"]
