"""plot_runs.py writes the three PNGs; summarize_results.py collects and prints the AP table."""

import json
import math

import pytest

from scripts_support import run_script

from mgd_tools import results_table as sr

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
    row = next(line for line in proc.stdout.splitlines() if line.startswith("MGD - student"))
    assert row.startswith("MGD - student (one run each: no spread)") and row.split()[-3] == "+0.25"

    proc = run_script("plot_runs.py", "--runs", "teacher=teacher", "student=student", "mgd=mgd",
                      "--ap-table", "results.json", "--out", "plots", cwd=runs)
    assert proc.returncode == 0, proc.stderr
    for name in ("loss_curves.png", "matching_cost.png", "ap_comparison.png"):
        _assert_png(runs / "plots" / name)


def test_cost_updates_are_taken_at_each_change():
    from mgd_tools.plots import cost_updates

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
    assert "| MGD - student (one run each: no spread) | +0.66 | +1.25 | +0.69 |" in md
    assert "MGD" not in sr.format_table({"teacher": results["teacher"]})


def test_bad_results_inputs(tmp_path):
    proc = run_script("summarize_results.py", tmp_path / "nothere.json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert len(proc.stderr.splitlines()) == 1
    proc = run_script("plot_runs.py", "--runs", f"x={tmp_path}", "--out", tmp_path / "p")
    assert proc.returncode == 2 and "no metrics.json" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "p").exists()


def _eval_json(path, ap):
    path.write_text(json.dumps({"bbox": {"AP": ap, "AP50": 2 * ap, "AP75": ap / 2}}))
    return path.name


def _cost_json(path, c2, c5):
    path.write_text(json.dumps({"costs": {"c2": c2, "c3": 0.5, "c4": 0.5, "c5": c5}, "images": 8}))
    return path.name


def test_seeds_are_averaged_and_paired(tmp_path):
    """Repeated NAMEs are runs (seeds): mean, sample std (n - 1) and the paired difference."""
    args = ["results.json", "--collect", "teacher=" + _eval_json(tmp_path / "t.json", 10.0)]
    for seed, (plain, mgd) in enumerate(((8.0, 8.5), (8.5, 9.5)), 1):
        args += ["--collect", "student=" + _eval_json(tmp_path / f"s{seed}.json", plain),
                 "--collect", "mgd=" + _eval_json(tmp_path / f"m{seed}.json", mgd)]
    for seed, (plain, mgd) in enumerate(((0.8, 0.6), (1.0, 0.6)), 1):
        args += ["--matched-cost", "student=" + _cost_json(tmp_path / f"cs{seed}.json", plain, 0.4),
                 "--matched-cost", "mgd=" + _cost_json(tmp_path / f"cm{seed}.json", mgd, 0.2)]
    proc = run_script("summarize_results.py", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = json.loads((tmp_path / "results.json").read_text())
    assert list(table) == ["teacher", "student", "mgd", "matched_cost", "matched_cost_std",
                           "matched_cost_runs"]
    assert table["teacher"] == {"AP": 10.0, "AP50": 20.0, "AP75": 5.0}
    # by hand: mean 8.25, std sqrt(2 * 0.25^2 / 1) = 0.35355
    assert table["student"]["AP"] == pytest.approx(8.25)
    assert table["student"]["std"]["AP"] == pytest.approx(0.353553, abs=1e-6)
    assert table["student"]["n"] == 2 and [r["AP"] for r in table["student"]["runs"]] == [8.0, 8.5]
    assert table["matched_cost"]["student"] == pytest.approx({"c2": 0.9, "c3": 0.5, "c4": 0.5, "c5": 0.4})
    assert table["matched_cost"]["mgd"]["c2"] == pytest.approx(0.6)
    assert table["matched_cost_std"]["student"]["c2"] == pytest.approx(0.141421, abs=1e-6)
    assert table["matched_cost_std"]["mgd"]["c2"] == pytest.approx(0.0)
    lines = proc.stdout.splitlines()
    # paired differences 0.5 and 1.0: mean +0.75, std 0.35
    # and the 95 % t-interval: 0.75 -/+ 12.7062 (t, 1 degree of freedom) x 0.35355 / sqrt(2) = 3.1766
    assert lines[4].startswith("MGD - student (paired over 2 runs: mean ± sd [95 % CI])")
    assert lines[4].split()[13:18] == ["+0.75", "±", "0.35", "[-2.43,", "+3.93]"]
    assert "student (2 runs)" in lines[2]
    # the teacher (10.0) is 1.75 AP ahead of the plain student's mean (8.25): one warning line
    assert [line for line in lines if line.startswith("warning:")] == [
        "warning: the teacher is +1.75 AP ahead of the plain student (student), less than 2: it has little to teach "
        "(the paper's teacher was 4.9 AP ahead; docs/study.md)"]
    cost_rows = {line.split()[0]: line for line in lines[6:] if line.strip()}
    # c2: (0.6 - 0.9) / 0.9 = -33 %; c5: (0.2 - 0.4) / 0.4 = -50 %
    assert cost_rows["c2"].split()[-2:] == ["-33", "%"]
    assert cost_rows["c5"].split()[-2:] == ["-50", "%"]


def test_matched_cost_table_and_plot(tmp_path):
    args = ["results.json", "--collect", "student=" + _eval_json(tmp_path / "s.json", 8.0),
            "--collect", "mgd=" + _eval_json(tmp_path / "m.json", 8.0),
            "--matched-cost", "student=" + _cost_json(tmp_path / "cs.json", 0.736, 0.391),
            "--matched-cost", "mgd=" + _cost_json(tmp_path / "cm.json", 0.558, 0.220), "--markdown"]
    proc = run_script("summarize_results.py", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| position | student | mgd | mgd vs student |" in proc.stdout
    assert "| c2 | 0.736 | 0.558 | -24 % |" in proc.stdout     # (0.558 - 0.736) / 0.736
    assert "| c5 | 0.391 | 0.220 | -44 % |" in proc.stdout
    assert "matched_cost_std" not in json.loads((tmp_path / "results.json").read_text())
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text('{"iteration": 19, "total_loss": 1.0}\n')
    proc = run_script("plot_runs.py", "--runs", "mgd=run", "--ap-table", "results.json",
                      "--out", "plots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_png(tmp_path / "plots" / "matched_cost_to_teacher.png")


def test_bad_matched_cost_inputs(tmp_path):
    (tmp_path / "nan.json").write_text('{"costs": {"c2": NaN}}')
    (tmp_path / "s.json").write_text('{"AP": 1.0, "AP50": 2.0, "AP75": 0.5}')
    for bad, message in (("student=missing.json", "not found"), ("student=nan.json", "finite"),
                         ("matched_cost=s.json", "reserved")):
        proc = run_script("summarize_results.py", "r.json", "--collect", "student=s.json",
                          "--matched-cost", bad, cwd=tmp_path)
        assert proc.returncode == 2 and message in proc.stderr, (bad, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1
        assert not (tmp_path / "r.json").exists()
