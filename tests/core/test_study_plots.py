"""The study's loss plot gives each arm one colour in every panel: the plain student logs no
loss_distill, so with matplotlib's per-panel colour cycle every MGD arm's distillation curve
took the colour of the arm before it in the legend (seen in the first interim report)."""
import json

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.axes  # noqa: E402

from mgd_tools import study_report  # noqa: E402

ARMS = ("plain", "mgd", "control", "factors_x4")


class _Runner:
    def __init__(self, root):
        self.root = root

    def run_dir(self, seed, arm):
        return str(self.root / f"seed{seed}" / arm)


def _write_metrics(folder, arm):
    folder.mkdir(parents=True)
    with open(folder / "metrics.json", "w") as f:
        for it in (19, 39):
            record = {"iteration": it, "total_loss": 1.0, "loss_cls": 0.5, "loss_box_reg": 0.4}
            if arm != "plain":
                record.update({"loss_distill": 0.1, "mgd/loss_c2": 0.02})
            f.write(json.dumps(record) + "\n")


def test_each_arm_has_one_colour_in_every_panel(tmp_path, monkeypatch):
    for arm in ARMS:
        _write_metrics(tmp_path / "seed1" / arm, arm)
    results = {"teacher": {"AP": 30.0},
               "arms": {arm: {"AP": [5.0, 6.0], **({} if arm == "plain" else
                        {"vs_plain": {"mean": 0.1, "ci95": [-1.0, 1.2], "differences": [0.0, 0.2]}})}
                        for arm in ARMS}}
    drawn = []
    original = matplotlib.axes.Axes.plot

    def plot(self, *args, **kwargs):
        lines = original(self, *args, **kwargs)
        if kwargs.get("label") in ARMS:
            drawn.append((self.get_title() or id(self), kwargs["label"], lines[0].get_color()))
        return lines

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", plot)
    study_report._plots(_Runner(tmp_path), results, str(tmp_path / "plots"))
    colours = {}
    for _, arm, colour in drawn:
        colours.setdefault(arm, set()).add(colour)
    assert set(colours) == set(ARMS)
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == len(ARMS)  # and no two arms alike
    assert (tmp_path / "plots" / "loss_curves.png").is_file()
