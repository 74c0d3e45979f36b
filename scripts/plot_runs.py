#!/usr/bin/env python
"""Plot the training curves, MGD matching costs and AP comparison of several runs (PNG).

    python scripts/plot_runs.py --runs [NAME=]DIR ... [--ap-table results.json] --out DIR

Each DIR is a Detectron2 output folder (or directly its metrics.json: one JSON object per
line, with ``iteration`` and scalars such as ``total_loss``, ``loss_cls``, ``loss_box_reg``,
``loss_distill``, ``mgd/cost_c2`` ...); a bare DIR is named after its folder. Missing keys,
missing runs' scalars and a cut-off last line are tolerated. Writes into --out:

* ``loss_curves.png``   - one panel per loss (total_loss, loss_cls, loss_box_reg,
  loss_distill, any other loss_*), one line per run (with markers when it has at most
  MARKERS_UP_TO points, so that a short run still shows);
* ``matching_cost.png`` - for each run that logged ``mgd/cost_<position>``: the mean matching
  cost of every position at each matching update (Detectron2 repeats the latest value on
  every log line, so a new point is taken whenever the costs change);
* ``ap_comparison.png`` - AP / AP50 / AP75 bars per model, from --ap-table (the
  summarize_results.py format) or, without it, from the evaluations found in the run
  folders (summarize_results.py --runs: their eval_results.json, else the last
  ``bbox/AP*`` of metrics.json);
  with several runs per model, the bars are means and the error bars one standard deviation;
* ``matched_cost_to_teacher.png`` - the mean matched cost to the teacher per position, one
  bar per model (the plain and the MGD student), from --ap-table's "matched_cost" (error
  bars: one standard deviation over runs); a placeholder if the table has none.

Uses matplotlib's Agg backend (no display needed).
"""
import os
import sys
from collections import Counter, OrderedDict

from mgd.cli import OneLineArgumentParser, run_cli
from mgd_tools.plots import (
    PlotError, ap_of_runs, plot_ap, plot_costs, plot_losses, plot_matched_cost, read_metrics)
from mgd_tools.results_table import load_results, parse_runs


def build_parser():
    p = OneLineArgumentParser(prog="plot_runs.py",
                              description="Plot losses, matching costs and AP of runs.")
    p.add_argument("--runs", nargs="+", required=True, metavar="[NAME=]DIR",
                   help="run name and its output folder (or metrics.json); a bare DIR is named after it")
    p.add_argument("--ap-table", metavar="RESULTS.json",
                   help="AP results in summarize_results.py's format")
    p.add_argument("--out", required=True, help="folder for the PNG files (created)")
    p.add_argument("--baseline", default="student")
    p.add_argument("--distilled", default="mgd")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    runs = OrderedDict()
    named_paths = parse_runs(args.runs)
    counts = Counter(name for name, _ in named_paths)
    seen = Counter()
    for name, path in named_paths:
        records, bad = read_metrics(path)
        seen[name] += 1
        label = f"{name} [{seen[name]}]" if counts[name] > 1 else name  # curves of each run of a name
        if bad:
            print(f"note: {label}: skipped {bad} unreadable line(s) of metrics.json")
        runs[label] = records
    table = load_results(args.ap_table) if args.ap_table else ap_of_runs(named_paths, runs)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        raise PlotError(f"cannot create output folder {args.out!r}: {exc}") from None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = [
        plot_losses(plt, runs, os.path.join(args.out, "loss_curves.png")),
        plot_costs(plt, runs, os.path.join(args.out, "matching_cost.png")),
        plot_ap(plt, table, os.path.join(args.out, "ap_comparison.png"),
                args.baseline, args.distilled),
        plot_matched_cost(plt, table, os.path.join(args.out, "matched_cost_to_teacher.png"),
                          args.baseline, args.distilled),
    ]
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
