"""The PNG plots of several runs: loss curves, matching costs, AP and matched cost to the teacher.

Command line: scripts/plot_runs.py (its docstring lists the files).
"""
import json
import math
import os
from collections import OrderedDict


from .results_table import METRICS, collect_runs, delta_row, models
from mgd.errors import UserError

#: a run's curve gets markers when it has at most this many points
MARKERS_UP_TO = 30
LOSS_ORDER = ("total_loss", "loss_cls", "loss_box_reg", "loss_distill")
COST_PREFIX = "mgd/cost_"
POSITION_ORDER = ("c2", "c3", "c4", "c5", "p3", "p4", "p5", "p6", "p7")


class PlotError(UserError):
    """A user-facing problem (one line)."""


def read_metrics(path):
    """Records of a metrics.json, one per iteration (the last record wins), sorted.

    Returns (records, n_bad_lines). Lines that are not JSON objects are skipped.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    if not os.path.isfile(path):
        raise PlotError(f"no metrics.json at {path!r}; pass a Detectron2 output folder")
    by_iter = OrderedDict()
    extra = []   # records without an iteration
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(rec, dict):
                bad += 1
                continue
            it = rec.get("iteration")
            if isinstance(it, (int, float)):
                merged = dict(by_iter.get(int(it), {}))
                merged.update(rec)
                by_iter[int(it)] = merged
            else:
                extra.append(rec)
    records = [by_iter[k] for k in sorted(by_iter)]
    return records + extra, bad


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(records, key):
    """(iterations, values) of a scalar over the records that have it."""
    xs, ys = [], []
    for rec in records:
        if "iteration" in rec and _number(rec.get(key)):
            xs.append(rec["iteration"])
            ys.append(float(rec[key]))
    return xs, ys


def loss_keys(runs):
    found = set()
    for recs in runs.values():
        for rec in recs:
            found.update(k for k in rec if (k == "total_loss" or k.startswith("loss"))
                         and _number(rec[k]))
    ordered = [k for k in LOSS_ORDER if k in found]
    return ordered + sorted(found - set(ordered))


def cost_updates(records):
    """[(iteration, {position: cost})] at each change of the logged matching costs."""
    out, last = [], None
    for rec in records:
        costs = {k[len(COST_PREFIX):]: float(v) for k, v in rec.items()
                 if k.startswith(COST_PREFIX) and _number(v)}
        if not costs or "iteration" not in rec:
            continue
        key = tuple(sorted(costs.items()))
        if key != last:  # the update's own iteration when logged, else the line's
            out.append((int(rec.get("mgd/matching_iter", rec["iteration"])), costs))
            last = key
    return out


def _position_sort(p):
    return (POSITION_ORDER.index(p), p) if p in POSITION_ORDER else (len(POSITION_ORDER), p)


def plot_losses(plt, runs, out_path):
    keys = loss_keys(runs)
    if not keys:
        return _placeholder(plt, out_path, "no loss scalars in these runs' metrics.json")
    ncols = 2 if len(keys) > 1 else 1
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        values = []
        for name, recs in runs.items():
            xs, ys = series(recs, key)
            if xs:
                ax.plot(xs, ys, label=name, linewidth=1.3, marker="o" if len(xs) <= MARKERS_UP_TO else None,
                        markersize=4)
                values += ys
        if values and min(values) > 0 and max(values) / min(values) > 50:
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if values:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.suptitle("training losses")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def plot_costs(plt, runs, out_path):
    updates = {name: cost_updates(recs) for name, recs in runs.items()}
    updates = {name: u for name, u in updates.items() if u}
    if not updates:
        return _placeholder(plt, out_path, "no mgd/cost_* scalars in these runs "
                                           "(only MGD runs log matching costs)")
    fig, axes = plt.subplots(1, len(updates), figsize=(6.5 * len(updates), 4), squeeze=False)
    for ax, (name, ups) in zip(axes.flat, updates.items()):
        positions = sorted({p for _, c in ups for p in c}, key=_position_sort)
        for p in positions:
            pts = [(it, c[p]) for it, c in ups if p in c]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
        ax.set_title(f"{name}: mean matching cost per position")
        ax.set_xlabel("iteration of the matching update")
        ax.set_ylabel("mean cost (2 - 2 cos)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def ap_from_runs(runs):
    """{run: {AP, AP50, AP75}} from the last bbox/AP* record of each run, where present."""
    table = OrderedDict()
    for name, recs in runs.items():
        for rec in reversed(recs):
            if all(_number(rec.get(f"bbox/{k}")) for k in METRICS):
                table[name] = {k: float(rec[f"bbox/{k}"]) for k in METRICS}
                break
    return table


def ap_of_runs(named_paths, runs):
    """The AP table of the runs: the evaluations found in each run folder (collect_runs),
    or the last bbox/AP* of a run given as a metrics.json file."""
    folders = [(name, path) for name, path in named_paths if os.path.isdir(path)]
    table, notes = collect_runs(folders)
    for note in notes:
        print(note)
    files = OrderedDict((name, runs[name]) for name, path in named_paths if not os.path.isdir(path) and name in runs)
    table.update(ap_from_runs(files))
    return table


def plot_ap(plt, table, out_path, baseline="student", distilled="mgd"):
    table = models(table)
    if not table:
        return _placeholder(plt, out_path, "no AP results yet (evaluate the models first)")
    import numpy as np

    names = list(table)
    width = 0.8 / len(METRICS)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 1.8 * len(names) + 2), 4))
    for i, k in enumerate(METRICS):
        _bar_group(ax, x + (i - (len(METRICS) - 1) / 2) * width, width, k,
                   [table[n].get(k) for n in names], [(table[n].get("std") or {}).get(k) for n in names],
                   "{:.2f}")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{n}\n({table[n]['n']} runs)" if table[n].get("n") else n
                        for n in names])
    ax.set_ylabel("COCO box AP (%)")
    title = "AP comparison"
    delta = delta_row(table, baseline, distilled)
    if delta is not None and _number(delta["AP"]):
        spread, ci = (delta.get("std") or {}).get("AP"), (delta.get("ci95") or {}).get("AP")
        if delta["n"] > 1 and _number(spread) and ci:
            title += (f"\n{distilled} - {baseline}: {delta['AP']:+.2f} ± {spread:.2f} AP, 95 % CI "
                      f"[{ci[0]:+.2f}, {ci[1]:+.2f}] ({delta['n']} paired runs)")
        else:
            title += f"\n{distilled} - {baseline}: {delta['AP']:+.2f} AP (one run each: no spread, no interval)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def _bar_group(ax, xs, width, label, values, spreads, fmt):
    """One series of a grouped bar chart: bars at ``xs`` (non-numbers drawn as 0), error bars
    where a spread is known, each bar annotated with ``fmt``."""
    vals = [v if _number(v) else 0.0 for v in values]
    errs = [e if _number(e) else 0.0 for e in spreads]
    bars = ax.bar(xs, vals, width, label=label, yerr=errs if any(errs) else None, capsize=3)
    for b, v in zip(bars, vals):
        ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=7)


def plot_matched_cost(plt, table, out_path, baseline="student", distilled="mgd"):
    """Bars per position: each model's mean matched cost to the teacher (lower = closer)."""
    costs = table.get("matched_cost") or {}
    if not costs:
        return _placeholder(plt, out_path, "no matched costs in the results table "
                                           "(scripts/measure_matched_cost.py)")
    import numpy as np

    spreads = table.get("matched_cost_std") or {}
    names = list(costs)
    positions = sorted({p for c in costs.values() for p in c}, key=_position_sort)
    width = 0.8 / len(names)
    x = np.arange(len(positions))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(positions) + 2), 4))
    for i, name in enumerate(names):
        _bar_group(ax, x + (i - (len(names) - 1) / 2) * width, width, name,
                   [costs[name].get(p) for p in positions], [(spreads.get(name) or {}).get(p) for p in positions],
                   "{:.3f}")
    ax.set_xticks(x)
    ax.set_xticklabels(positions)
    ax.set_xlabel("distilled position")
    ax.set_ylabel("mean matched cost to the teacher (2 - 2 cos)")
    ax.set_title("feature distance to the teacher on the val split (lower = closer)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path


def _placeholder(plt, out_path, message):
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
