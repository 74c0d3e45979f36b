"""plot_runs.py writes the three PNGs; summarize_results.py collects and prints the AP table."""

import json
import math

import pytest

from test_scripts_support import run_script

import summarize_results as sr  # noqa: E402  (scripts/ is on sys.path via the support module)

PNG = b"\x89PNG\r\n\x1a\n"


def _write_metrics(folder, distill, ap, iters=300, cut_last_line=True):
    folder.mkdir(parents=True)
    with open(folder / "metrics.json", "w") as f:
        for it in range(19, iters, 20):
            rec = {"iteration": it, "lr": 0.01, "total_loss": 2 * math.exp(-it / 150),
                   "loss_cls": math.exp(-it / 150), "loss_box_reg": 0.5 * math.exp(-it / 200)}
            if distill:
                rec["loss_distill"] = 0.02 * math.exp(-it / 80)
                update = 0 if it < 100 else 100 if it < 200 else 200
                for i, pos in enumerate(("c2", "c3", "c4", "c5")):
                    # Detectron2 repeats the latest value on every line until the next update
                    rec[f"mgd/cost_{pos}"] = 1.6 - 0.1 * i - update / 1000
            f.write(json.dumps(rec) + "\n")
        f.write(json.dumps({"iteration": iters - 1, "bbox/AP": ap, "bbox/AP50": ap * 2,
                            "bbox/AP75": ap / 2}) + "\n")
        if cut_last_line:
            f.write('{"iteration": 400, "total_lo')  # a run killed mid-write


@pytest.fixture
def runs(tmp_path):
    _write_metrics(tmp_path / "teacher", False, 10.5)
    _write_metrics(tmp_path / "student", False, 8.25)
    _write_metrics(tmp_path / "mgd", True, 8.5)
    return tmp_path


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 2000, path


def test_collect_table_and_plots(runs):
    proc = run_script("summarize_results.py", "results.json", "--collect", "teacher=teacher",
                      "student=student/metrics.json", "mgd=mgd", cwd=runs)
    assert proc.returncode == 0, proc.stderr
    table = json.loads((runs / "results.json").read_text())
    assert list(table) == ["teacher", "student", "mgd"]
    assert table["student"] == {"AP": 8.25, "AP50": 16.5, "AP75": 4.125}
    last = proc.stdout.splitlines()[-1].split()
    assert last[:3] == ["MGD", "-", "student"] and last[3] == "+0.25"

    proc = run_script("plot_runs.py", "--runs", "teacher=teacher", "student=student", "mgd=mgd",
                      "--ap-table", "results.json", "--out", "plots", cwd=runs)
    assert proc.returncode == 0, proc.stderr
    for name in ("loss_curves.png", "matching_cost.png", "ap_comparison.png"):
        _assert_png(runs / "plots" / name)


def test_cost_updates_are_taken_at_each_change():
    from plot_runs import cost_updates

    recs = [{"iteration": i, "mgd/cost_c2": 1.0 if i < 40 else 0.5} for i in (19, 39, 59, 79)]
    assert cost_updates(recs) == [(19, {"c2": 1.0}), (59, {"c2": 0.5})]


def test_plots_tolerate_missing_keys(tmp_path):
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "metrics.json").write_text(
        '{"iteration": 19, "lr": 0.01}\n{"iteration": 39, "loss_cls": 1.0}\n')
    proc = run_script("plot_runs.py", "--runs", "only=bare", "--out", "p", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("loss_curves.png", "matching_cost.png", "ap_comparison.png"):
        assert (tmp_path / "p" / name).read_bytes().startswith(PNG)


def test_results_table_formats():
    results = {"teacher": {"AP": 36.7, "AP50": 56.03, "AP75": 39.04},
               "student": {"AP": 31.81, "AP50": 49.84, "AP75": 33.6},
               "mgd": {"AP": 32.47, "AP50": 51.09, "AP75": 34.29}}
    text = sr.format_table(results)
    assert text.splitlines()[-1].split()[-3:] == ["+0.66", "+1.25", "+0.69"]
    md = sr.format_table(results, markdown=True)
    assert md.splitlines()[0] == "| model | AP | AP50 | AP75 |"
    assert "| MGD - student | +0.66 | +1.25 | +0.69 |" in md
    assert "MGD" not in sr.format_table({"teacher": results["teacher"]})


def test_bad_results_inputs(tmp_path):
    proc = run_script("summarize_results.py", tmp_path / "nothere.json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert len(proc.stderr.splitlines()) == 1
    proc = run_script("plot_runs.py", "--runs", f"x={tmp_path}", "--out", tmp_path / "p")
    assert proc.returncode == 2 and "no metrics.json" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "p").exists()
