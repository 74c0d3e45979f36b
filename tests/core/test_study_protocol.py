"""The study's protocol files and the runner's bookkeeping (no training: mgd_tools/study_*)."""
from pathlib import Path

import pytest
import yaml

from mgd.errors import UserError
from mgd_tools.study_protocol import ARMS, ProtocolError, load_protocol
from mgd_tools.study_runner import StudyRunner, format_seconds

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "study" / "tiny_protocol.yaml"


def _write(tmp_path, **changes):
    raw = yaml.safe_load(TINY.read_text())
    raw.update(changes)
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_published_protocols_load_with_the_seeds_the_issue_asks_for(name):
    p = load_protocol(str(REPO / "configs" / "study" / f"{name}.yaml"))
    assert set(p.arms) == set(ARMS)
    assert min(p.arms[a] for a in ("plain", "mgd", "fixed_assignment")) >= 5
    assert min(p.arms["factors_x0.25"], p.arms["factors_x4"]) >= 3 and p.arms["control"] >= 2
    assert p.student.iterations < p.teacher.iterations
    assert p.seeds("mgd") == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("changes, message", [
    ({"arms": {"plain": 2, "mgd": 2, "distilled": 1}}, "unknown arm"),
    ({"arms": {"plain": 1, "mgd": 2}}, "plain needs as many seeds"),
    ({"student": {"iterations": 6, "lr": 0.01, "warmup": 1, "steps": [9]}}, "inside (0, iterations)"),
    ({"exploratory": {"mgd": {"seeds": 1, "opts": []}}}, "a name of its own"),
    ({"exploratory": {"x": {"seeds": 1, "opts": ["MGD.DISTILL_UNTIL"]}}}, "KEY VALUE pairs"),
    ({"exploratory": {"x": {"seeds": 5, "opts": []}}}, "more seeds than plain"),
])
def test_a_protocol_that_cannot_run_is_one_line(tmp_path, changes, message):
    with pytest.raises(ProtocolError) as error:
        load_protocol(str(_write(tmp_path, **changes)))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_key_is_named(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    del raw["teacher"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ProtocolError, match="lacks teacher"):
        load_protocol(str(path))


def test_a_study_folder_refuses_another_protocol_but_takes_more_seeds(tmp_path):
    out = tmp_path / "study"
    runner = StudyRunner(load_protocol(str(TINY)), str(out), checkout="")
    out.mkdir()
    runner._check_settings()
    assert (out / "protocol.json").exists()
    more_seeds = yaml.safe_load(TINY.read_text())
    more_seeds["arms"]["factors_x4"] = 2
    StudyRunner(load_protocol(str(_write(tmp_path, arms=more_seeds["arms"]))), str(out), "")._check_settings()
    longer = _write(tmp_path, student={"iterations": 8, "lr": 0.005, "warmup": 1, "steps": [5]})
    with pytest.raises(UserError, match=r"holds runs of another protocol \(student differ"):
        StudyRunner(load_protocol(str(longer)), str(out), "")._check_settings()


def test_the_plan_runs_seed_by_seed_then_the_exploratory_arms(tmp_path):
    runner = StudyRunner(load_protocol(str(TINY)), str(tmp_path), checkout="")
    trainings = [s.name for s in runner.steps() if s.name.startswith("train ")]
    assert trainings == ["train plain, seed 1", "train mgd, seed 1", "train control, seed 1",
                         "train fixed_assignment, seed 1", "train factors_x0.25, seed 1", "train factors_x4, seed 1",
                         "train plain, seed 2", "train mgd, seed 2", "train control, seed 2",
                         "train fixed_assignment, seed 2", "train grad_norms, seed 1"]


def test_the_eta_scales_each_kind_by_its_measured_rate(tmp_path):
    runner = StudyRunner(load_protocol(str(TINY)), str(tmp_path), checkout="")
    plan = runner.steps()
    plain_runs = [s for s in plan if s.kind == "train:plain"]
    runner.timings = {plain_runs[0].name: 2 * plain_runs[0].estimate}  # plain trainings take twice the estimate
    todo = plain_runs[1:]
    assert runner._eta(todo) == pytest.approx(sum(2 * s.estimate for s in todo))
    assert format_seconds(59) == "59 s" and format_seconds(61) == "1 min 01 s" and format_seconds(3720) == "1 h 02 min"
