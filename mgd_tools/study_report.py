"""The study's results: ``results.json``, the tables (``tables.md``) and the plots of a finished study.

``results.json``::

    {"teacher": {"AP", "AP50", "AP75"},
     "arms": {"<arm>": {"seeds": [1, ...], "AP": [...], "AP50": [...], "AP75": [...],
                        "matched_cost": {"c2": [...], ...},
                        "vs_plain": {"mean", "sd", "ci95": [low, high], "seeds", "differences",   (AP)
                                     "AP50": {...}, "AP75": {...}, "matched_cost": {"c2": {...}}}},  (not for plain)
              ...},
     "protocol": {...}, "wall_seconds": ..., "steps": {name: seconds}, "machine": {...}}

Every run is reported; none is left out. ``vs_plain`` is the paired difference arm - plain over
the seeds both have (mgd_tools.stats.paired_difference: mean, sample sd, 95 % t-interval).
"""
import json
import os
import platform
from typing import Dict, List

from mgd.checkpoint import atomic_write

from .plots import read_metrics, series
from .results_table import METRICS, read_metrics_source
from .stats import paired_difference, summary
from .study_protocol import ARMS

__all__ = ["collect_results", "write_report", "machine", "format_tables"]

POSITIONS = ("c2", "c3", "c4", "c5")
#: AP the teacher must lead the plain student's mean by for the study to speak to MGD (the paper: 4.9)
TEACHER_LEAD_REQUIRED = 5.0


def machine() -> dict:
    """What the study ran on (CPU model, cores, the torch build)."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
            else None, "torch": torch.__version__, "python": platform.python_version()}


def _costs(path: str) -> Dict[str, float]:
    with open(path) as f:
        return json.load(f)["costs"]


def _arm_entry(runner, arm: str, what: str) -> dict:
    """One arm's runs: seeds, what it is, AP/AP50/AP75 and the matched costs per seed."""
    seeds = runner.protocol.seeds(arm)
    entry = {"seeds": seeds, "what": what}
    evaluations = [read_metrics_source(os.path.join(runner.run_dir(s, arm), "eval", "eval_results.json"))
                   for s in seeds]
    for metric in METRICS:
        entry[metric] = [float(e[metric]) for e in evaluations]
    costs = [_costs(os.path.join(runner.run_dir(s, arm), "matched_cost.json")) for s in seeds]
    entry["matched_cost"] = {pos: [c[pos] for c in costs] for pos in costs[0]}
    return entry


def _versus_plain(entry: dict, plain: dict) -> dict:
    """The paired differences entry - plain by seed (AP, with AP50, AP75 and the matched costs)."""
    by_seed = {m: (dict(zip(entry["seeds"], entry[m])), dict(zip(plain["seeds"], plain[m]))) for m in METRICS}
    vs = paired_difference(*by_seed["AP"])
    vs.update({m: paired_difference(*by_seed[m]) for m in METRICS[1:]})
    vs["matched_cost"] = {pos: paired_difference(dict(zip(entry["seeds"], entry["matched_cost"][pos])),
                                                 dict(zip(plain["seeds"], plain["matched_cost"][pos])))
                          for pos in entry["matched_cost"]}
    return vs


def collect_results(runner) -> dict:
    """results.json's content from a finished study (``runner``: the StudyRunner that ran it)."""
    p = runner.protocol
    teacher = read_metrics_source(runner.path("teacher", "eval", "eval_results.json"))
    arms = {arm: _arm_entry(runner, arm, what) for arm, what in ARMS.items() if p.seeds(arm)}
    exploratory = {arm: {**_arm_entry(runner, arm, str(spec.get("what", ""))), "opts": list(spec.get("opts", []))}
                   for arm, spec in p.exploratory.items() if p.seeds(arm)}
    plain = arms.get("plain")
    if plain is not None:
        for arm, entry in list(arms.items()) + list(exploratory.items()):
            if arm != "plain":
                entry["vs_plain"] = _versus_plain(entry, plain)
    steps = dict(runner.timings)
    results = {"teacher": {m: float(teacher[m]) for m in METRICS}, "arms": arms, "protocol": p.as_dict(),
               "wall_seconds": round(sum(steps.values()), 1), "steps": steps, "machine": machine()}
    if plain is not None:  # the study's precondition: a teacher at least 5 AP ahead (the paper: 4.9)
        lead = results["teacher"]["AP"] - summary(plain["AP"])["mean"]
        results["teacher_lead"] = {"AP": lead, "required": TEACHER_LEAD_REQUIRED, "met": lead >= TEACHER_LEAD_REQUIRED}
    if exploratory:
        results["exploratory"] = exploratory
    return results


def _fmt(value, signed=False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _rows(results: dict) -> list:
    """(label, entry) of every arm, the exploratory ones last and labelled so."""
    return list(results["arms"].items()) + [(f"{name} (exploratory)", entry)
                                            for name, entry in results.get("exploratory", {}).items()]


def format_tables(results: dict) -> str:
    """Markdown: AP per arm (mean ± sd, every seed), the paired differences with their
    intervals, and the matched cost per position."""
    lead = results.get("teacher_lead")
    lines = [f"Teacher R50: AP {results['teacher']['AP']:.2f}, AP50 {results['teacher']['AP50']:.2f}, "
             f"AP75 {results['teacher']['AP75']:.2f}" + (
                 f"; {lead['AP']:.2f} AP ahead of the plain student's mean (required: at least {lead['required']:g}, "
                 f"{'met' if lead['met'] else 'NOT met: the study cannot speak to MGD with a strong teacher'})"
                 if lead else ""), "",
             "| arm | seeds | AP (mean ± sd) | AP50 | AP75 | AP per seed |", "|---|---:|---:|---:|---:|---|"]
    rows = _rows(results)
    for arm, e in rows:
        cells = []
        for m in METRICS:
            s = summary(e[m])
            cells.append(_fmt(s["mean"]) + (f" ± {s['sd']:.2f}" if s["sd"] is not None else ""))
        lines.append(f"| {arm} | {len(e['seeds'])} | {' | '.join(cells)} | {', '.join(f'{v:.2f}' for v in e['AP'])} |")
    lines += ["", "| arm − plain (paired by seed) | n | AP: mean | sd | 95 % CI | AP50: mean [95 % CI] | "
                  "AP75: mean [95 % CI] |", "|---|---:|---:|---:|---|---|---|"]
    for arm, e in rows:
        vs = e.get("vs_plain")
        if not vs:
            continue

        def interval(d):
            return f"[{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d["ci95"] else "–"

        lines.append(f"| {arm} | {vs['n']} | {_fmt(vs['mean'], True)} | {_fmt(vs['sd'])} | {interval(vs)} | "
                     f"{_fmt(vs['AP50']['mean'], True)} {interval(vs['AP50'])} | "
                     f"{_fmt(vs['AP75']['mean'], True)} {interval(vs['AP75'])} |")
    positions = [p for p in POSITIONS if p in next(iter(results["arms"].values()))["matched_cost"]]
    lines += ["", "| arm | " + " | ".join(f"matched cost {p}" for p in positions) + " |",
              "|---|" + "---:|" * len(positions)]
    for arm, e in rows:
        cells = []
        for p in positions:
            s = summary(e["matched_cost"][p])
            cells.append(f"{s['mean']:.3f}" + (f" ± {s['sd']:.3f}" if s["sd"] is not None else ""))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plots(runner, results: dict, out: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    arms = list(results["arms"])
    written = []
    # AP per arm, every seed a point, the mean a bar; the teacher a line
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for x, arm in enumerate(arms):
        aps = results["arms"][arm]["AP"]
        ax.bar(x, sum(aps) / len(aps), color="#c9d7ea", width=0.6)
        ax.scatter([x + (i - (len(aps) - 1) / 2) * 0.07 for i in range(len(aps))], aps, color="#1f4e8c", zorder=3,
                   s=18)
    ax.axhline(results["teacher"]["AP"], color="#b03a2e", linestyle="--", label="teacher R50")
    ax.set_xticks(range(len(arms)), arms, rotation=20)
    ax.set_ylabel("COCO box AP (val)")
    ax.set_title("AP per arm: bars = mean, points = seeds")
    ax.legend(loc="lower right")
    fig.tight_layout()
    written.append(os.path.join(out, "ap_per_arm.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    # arm - plain with its 95 % interval
    compared = [a for a in arms if "vs_plain" in results["arms"][a]]
    if compared:
        fig, ax = plt.subplots(figsize=(7.5, 3.6))
        for x, arm in enumerate(compared):
            vs = results["arms"][arm]["vs_plain"]
            if vs["ci95"]:
                ax.errorbar(x, vs["mean"], yerr=[[vs["mean"] - vs["ci95"][0]], [vs["ci95"][1] - vs["mean"]]],
                            fmt="o", color="#1f4e8c", capsize=5)
            ax.scatter([x] * len(vs["differences"]), vs["differences"], color="#7f8c8d", s=12, zorder=3)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(compared)), compared, rotation=20)
        ax.set_ylabel("AP difference to plain")
        ax.set_title("arm − plain, paired by seed: mean and 95 % t-interval (grey: seeds)")
        fig.tight_layout()
        written.append(os.path.join(out, "difference_vs_plain.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    # training losses, seed 1 of every arm
    keys = ("total_loss", "loss_cls", "loss_box_reg", "loss_distill")
    fig, axes = plt.subplots(1, len(keys), figsize=(14, 3.3))
    for i, arm in enumerate(arms):  # one colour per arm in every panel (plain has no loss_distill)
        records, _ = read_metrics(os.path.join(runner.run_dir(1, arm), "metrics.json"))
        for ax, key in zip(axes, keys):
            xs, ys = series(records, key)
            if xs:
                ax.plot(xs, ys, label=arm, color=f"C{i}")
    for ax, key in zip(axes, keys):
        ax.set_title(key)
        ax.set_xlabel("iteration")
    axes[0].legend(fontsize=7)
    fig.suptitle("training losses (seed 1; loss_distill 0 for the control by construction)")
    fig.tight_layout()
    written.append(os.path.join(out, "loss_curves.png"))
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    written += _diagnostic_plots(runner, results, out, plt)
    return written


def _diagnostic_plots(runner, results: dict, out: str, plt) -> List[str]:
    """The distillation loss per position over training (mgd, seed 1), and where an exploratory
    arm logged them (MGD.GRAD_NORM_PERIOD), the gradient norms on the student's ResNet."""
    records, _ = read_metrics(os.path.join(runner.run_dir(1, "mgd"), "metrics.json"))
    logged = [(arm, read_metrics(os.path.join(runner.run_dir(1, arm), "metrics.json"))[0])
              for arm, spec in results.get("exploratory", {}).items()
              if "MGD.GRAD_NORM_PERIOD" in [str(o) for o in spec.get("opts", [])]]
    fig, axes = plt.subplots(1, 1 + 2 * bool(logged), figsize=(5.5 * (1 + 2 * bool(logged)), 3.6), squeeze=False)
    axes = axes[0]
    for pos in POSITIONS:
        xs, ys = series(records, f"mgd/loss_{pos}")
        if xs:
            axes[0].plot(xs, ys, label=pos)
    axes[0].set_title("mgd (seed 1): distillation loss per position")
    axes[0].set_xlabel("iteration")
    axes[0].legend(fontsize=7)
    for arm, recs in logged:
        for key, label in (("mgd/grad_norm_detection", "detection"), ("mgd/grad_norm_distill", "distillation")):
            xs, ys = series(recs, key)
            axes[1].plot(xs, ys, marker="o", markersize=3, label=f"{label} ({arm})")
        xs, ys = series(recs, "mgd/grad_cosine")
        axes[2].plot(xs, ys, marker="o", markersize=3, label=arm)
    if logged:
        axes[1].set_yscale("log")
        axes[1].set_title("gradient norm on the student's ResNet (seed 1)")
        axes[2].axhline(0, color="black", linewidth=0.8)
        axes[2].set_title("cosine(detection gradient, distillation gradient)")
        for ax in axes[1:]:
            ax.set_xlabel("iteration")
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, "distillation_diagnostics.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def write_report(runner) -> dict:
    """Write results.json, tables.md and plots/ into the study folder; return the results."""
    results = collect_results(runner)
    text = json.dumps(results, indent=1)
    atomic_write(runner.path("results.json"), lambda f: f.write(text.encode()))
    tables = format_tables(results)
    atomic_write(runner.path("tables.md"), lambda f: f.write(tables.encode()))
    plots = _plots(runner, results, runner.path("plots"))
    runner.log(tables)
    runner.log(f"[study] results: {runner.path('results.json')}, {runner.path('tables.md')}; plots: {' '.join(plots)}")
    return results
