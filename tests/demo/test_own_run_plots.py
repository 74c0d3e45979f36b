"""A results table and plots for any run folders: `make plots RUNS=...` and
`summarize_results.py --runs` find each run's evaluations (eval_results.json in it or a
subfolder, else its metrics.json's last bbox/AP); short runs' curves have markers."""
import json
import math
import subprocess
import sys

import pytest

from scripts_support import REPO, run_script

from mgd_tools import plots as plot_runs

REPO_MAKE = ["make", "--no-print-directory", "-C", str(REPO)]


def _metrics(folder, points, ap=None):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.json", "w") as f:
        for i in range(points):
            f.write(json.dumps({"iteration": 19 + 20 * i, "total_loss": 2 * math.exp(-i / 3),
                                "loss_cls": math.exp(-i / 3)}) + "\n")
        if ap is not None:
            f.write(json.dumps({"iteration": 20 * points - 1, "bbox/AP": ap, "bbox/AP50": 2 * ap,
                                "bbox/AP75": ap / 2}) + "\n")


def _evaluation(folder, ap, network, weights, dataset="mine_val"):
    folder.mkdir(parents=True)
    (folder / "eval_results.json").write_text(json.dumps({
        "bbox": {"AP": ap, "AP50": 2 * ap, "AP75": ap / 2, "APs": None},
        "provenance": {"weights": {"path": weights, "sha256": "0123456789ab"}, "network": network,
                       "datasets": [{"name": dataset, "images": 60, "annotations": 300}]}}))


@pytest.fixture
def own_runs(tmp_path):
    """The own-data chain's folders: a teacher evaluated at the end of its training only, a
    plain student evaluated by `make eval`, an MGD run with its student and teacher evaluated."""
    _metrics(tmp_path / "base-R50", 40, ap=12.5)
    _metrics(tmp_path / "base-R18", 1)  # a run of one logged point
    _evaluation(tmp_path / "base-R18" / "eval", 6.25, "retinanet", "base-R18/model_final.pth")
    _metrics(tmp_path / "mgd", 3)
    _evaluation(tmp_path / "mgd" / "eval", 7.0, "student", "mgd/model_final.pkl")
    _evaluation(tmp_path / "mgd" / "eval-teacher", 12.0, "teacher", "mgd/model_final.teacher.pkl")
    _evaluation(tmp_path / "mgd" / "previous-1", 1.0, "student", "old.pkl")  # an earlier one kept: not shown
    return tmp_path


def test_results_table_of_run_folders(own_runs):
    proc = run_script("summarize_results.py", "--runs", "teacher=base-R50", "student=base-R18", "mgd=mgd",
                      "--write", "plots/results.json", cwd=own_runs)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("  ")[0].strip(): line.split()[-3:] for line in proc.stdout.splitlines()[1:6]}
    assert rows == {"teacher": ["12.50", "25.00", "6.25"], "student": ["6.25", "12.50", "3.12"],
                    "mgd": ["7.00", "14.00", "3.50"], "mgd (teacher)": ["12.00", "24.00", "6.00"],
                    "MGD - student (one run each: no spread)": ["+0.75", "+1.50", "+0.38"]}
    assert "  mgd: student, mgd/model_final.pkl (0123456789ab) on mine_val; mgd/eval/eval_results.json" in proc.stdout
    assert "  teacher: the training's last evaluation; base-R50/metrics.json" in proc.stdout
    table = json.loads((own_runs / "plots" / "results.json").read_text())
    assert list(table) == ["teacher", "student", "mgd", "mgd (teacher)"]


def test_a_bare_folder_is_named_after_it_and_a_run_without_evaluation_is_a_note(own_runs):
    _metrics(own_runs / "fresh", 5)
    proc = run_script("summarize_results.py", "--runs", "mgd", "fresh", cwd=own_runs)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == ("note: no evaluation in fresh (no eval_results.json there or in a "
                                           "subfolder, no bbox/AP in its metrics.json): evaluate it with `make eval`")
    assert [line.split("  ")[0] for line in proc.stdout.splitlines()[2:4]] == ["mgd", "mgd (teacher)"]


def _seed_runs(root, aps):
    """Run folders of one model, one per seed, each with a make-eval evaluation of AP ``ap``."""
    folders = []
    for seed, ap in enumerate(aps, 1):
        folder = root / f"s{seed}"
        _evaluation(folder / "eval", ap, "student", f"s{seed}/model_final.pkl")
        folders.append(folder)
    return folders


def test_runs_named_alike_are_seeds_averaged_and_paired_with_a_t_interval(tmp_path):
    students = _seed_runs(tmp_path / "student", [6.0, 7.0, 8.0])
    mgds = _seed_runs(tmp_path / "mgd", [6.5, 7.25, 9.0])
    _evaluation(tmp_path / "teacher" / "eval", 7.5, "teacher", "teacher.pkl")
    args = [f"student={f}" for f in students] + [f"mgd={f}" for f in mgds] + [f"teacher={tmp_path / 'teacher'}"]
    proc = run_script("summarize_results.py", "--runs", *args, "--write", str(tmp_path / "results.json"))
    assert proc.returncode == 0, proc.stderr
    table = json.loads((tmp_path / "results.json").read_text())
    assert table["student"]["n"] == 3 and table["student"]["AP"] == pytest.approx(7.0)
    assert table["student"]["std"]["AP"] == pytest.approx(1.0)
    # differences 0.5, 0.25, 1.0: mean 7/12, sd sqrt(7)/sqrt(48)... by hand
    diffs = [0.5, 0.25, 1.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # Student's t, 0.975 quantile, 2 degrees of freedom
    row = next(line for line in proc.stdout.splitlines() if line.startswith("MGD - student"))
    assert row.startswith("MGD - student (paired over 3 runs: mean ± sd [95 % CI])")
    assert f"+{mean:.2f} ± {sd:.2f} [{mean - half:+.2f}, {mean + half:+.2f}]" in row
    # the teacher is 0.5 AP ahead of the plain student's mean: one warning line
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: the teacher is +0.50 AP ahead of the plain student (student), less than 2: it has "
                        "little to teach (the paper's teacher was 4.9 AP ahead; docs/study.md)"]
    # runs paired in the order given: reversing one model's seeds changes the pairing, not the means
    reordered = [f"student={f}" for f in students] + [f"mgd={f}" for f in reversed(mgds)]
    proc = run_script("summarize_results.py", "--runs", *reordered)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("MGD - student"))
    assert f"+{mean:.2f} ± {sd:.2f}" not in row and f"+{mean:.2f}" in row


def test_one_run_each_is_labelled_a_single_difference_and_a_clear_teacher_gets_no_warning(own_runs):
    proc = run_script("summarize_results.py", "--runs", "teacher=base-R50", "student=base-R18", "mgd=mgd",
                      cwd=own_runs)
    assert "MGD - student (one run each: no spread)" in proc.stdout
    assert "warning:" not in proc.stdout  # the teacher is 6.25 AP ahead


def test_matched_costs_in_run_folders_are_tabulated_and_averaged_over_seeds(tmp_path):
    students = _seed_runs(tmp_path / "student", [6.0, 7.0])
    mgds = _seed_runs(tmp_path / "mgd", [6.5, 7.5])
    for folder, cost in zip(students + mgds, (0.8, 0.6, 0.5, 0.4)):
        (folder / "matched_cost.json").write_text(json.dumps({"costs": {"c2": cost, "c3": 2 * cost}}))
    args = [f"student={f}" for f in students] + [f"mgd={f}" for f in mgds]
    proc = run_script("summarize_results.py", "--runs", *args, "--write", str(tmp_path / "results.json"))
    assert proc.returncode == 0, proc.stderr
    table = json.loads((tmp_path / "results.json").read_text())
    assert table["matched_cost"] == {"student": {"c2": pytest.approx(0.7), "c3": pytest.approx(1.4)},
                                     "mgd": {"c2": pytest.approx(0.45), "c3": pytest.approx(0.9)}}
    assert table["matched_cost_std"]["student"]["c2"] == pytest.approx(math.sqrt(0.02))
    assert "Mean matched cost to the teacher" in proc.stdout


def test_make_plots_of_own_runs(own_runs):
    runs = f"teacher={own_runs / 'base-R50'} student={own_runs / 'base-R18'} mgd={own_runs / 'mgd'}"
    proc = subprocess.run([*REPO_MAKE, "plots", f"PYTHON={sys.executable}", f"RUNS={runs}",
                           f"OUTPUT_DIR={own_runs / 'out'}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    assert "MGD - student" in proc.stdout
    for name in ("loss_curves.png", "matching_cost.png", "ap_comparison.png", "results.json"):
        assert (own_runs / "out" / "plots" / name).exists(), name


def _captured_figures(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures, subplots = [], plt.subplots

    def recording(*args, **kwargs):
        figures.append(subplots(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(plt, "subplots", recording)
    return plt, figures


def test_short_runs_get_markers_and_every_row_is_a_bar(own_runs, monkeypatch, tmp_path):
    plt, figures = _captured_figures(monkeypatch)
    runs = {name: plot_runs.read_metrics(str(own_runs / folder))[0]
            for name, folder in (("teacher", "base-R50"), ("student", "base-R18"), ("mgd", "mgd"))}
    plot_runs.plot_losses(plt, runs, str(tmp_path / "losses.png"))
    fig, _ = figures[-1]
    markers = {line.get_label(): line.get_marker() for line in fig.axes[0].get_lines()}
    assert markers == {"teacher": "None", "student": "o", "mgd": "o"}  # 40 points: a line is enough

    table, _ = plot_runs.collect_runs([("teacher", str(own_runs / "base-R50")), ("student", str(own_runs / "base-R18")),
                                       ("mgd", str(own_runs / "mgd"))])
    plot_runs.plot_ap(plt, table, str(tmp_path / "ap.png"))
    fig, ax = figures[-1]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["teacher", "student", "mgd", "mgd (teacher)"]
