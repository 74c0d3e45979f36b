#!/usr/bin/env python
"""Collect COCO box AP and matched costs of several models into one JSON file; print tables.

    python scripts/summarize_results.py RESULTS.json [--collect NAME=SRC ...]         [--matched-cost NAME=FILE ...] [--baseline student] [--distilled mgd] [--markdown]
    python scripts/summarize_results.py --runs [NAME=]DIR ... [--write RESULTS.json] [--markdown]

--runs: the evaluations found in run folders (``make plots RUNS=...``), and the matched costs
that ``make matched-cost`` wrote there (``matched_cost.json``): every
``eval_results.json`` in DIR or a direct subfolder (``make eval`` writes DIR/eval and
DIR/eval-teacher; ``previous-N`` archives are left out), else the last ``bbox/AP`` of DIR's
metrics.json (the training's final evaluation). A row is named NAME (default: the folder's
name) for a run's only student (or plain) evaluation, "NAME (teacher)" for its only teacher
evaluation, else NAME/SUBFOLDER; each row says what was evaluated on which dataset, from the
results file's "provenance". A NAME given several times names runs of one model (seeds, e.g.
``student=run-s1 student=run-s2 mgd=mgd-s1 mgd=mgd-s2``): its row holds their mean ± sd, and
"MGD - student" is paired run by run in the order given, with its 95 % t-interval. --write saves
the rows as RESULTS.json (the format below). A teacher row less than 2 AP above the student's
gets one warning line.

RESULTS.json format (written by the demo; AP values in percent, as Detectron2 prints them)::

    {
      "teacher": {"AP": 10.66, "AP50": 20.10, "AP75": 9.65},
      "student": {"AP": 8.14,  "AP50": 17.27, "AP75": 6.14},
      "mgd":     {"AP": 7.99,  "AP50": 17.26, "AP75": 5.32},
      "matched_cost": {"student": {"c2": 0.736, "c3": 0.997, ...}, "mgd": {"c2": 0.558, ...}}
    }

Models are printed in file order; extra keys (e.g. "APs", "weights", "iters") are kept and
ignored. If both the baseline ("student") and the distilled model ("mgd") are present, a last
row "MGD - student" gives their difference.

--collect NAME=SRC adds or replaces NAME in RESULTS.json (written atomically) before printing.
SRC may be: a JSON file in the per-model form above (``{"AP": ..}``); the dict Detectron2's
``Trainer.test`` returns, dumped as JSON (``{"bbox": {"AP": ..}}``); or a Detectron2
``metrics.json`` (or its folder), whose last line holding ``bbox/AP`` is used.

--matched-cost NAME=FILE adds NAME's mean matched cost per position to the teacher (2 - 2 cos,
a scripts/measure_matched_cost.py output) under "matched_cost"; a second table prints them.

Several runs of one model (seeds): give the same NAME several times. Its entry then holds the
mean, "std" (sample standard deviation, n - 1) and the per-run values in "runs"; matched costs
likewise ("matched_cost" holds the means, "matched_cost_std" and "matched_cost_runs" the rest).
Runs are paired in the order given: the "MGD - student" row is the mean of the per-run
differences, with their standard deviation and 95 % t-interval; with one run each, the row says
it is a single difference, without spread.
"""
import os
import sys

from mgd.cli import OneLineArgumentParser, run_cli
from mgd_tools.results_table import (
    ResultsError, collect, collect_runs, format_cost_table, format_run_table, format_table, load_results, models,
    parse_runs, teacher_gap_warning, write_results)


def build_parser():
    p = OneLineArgumentParser(prog="summarize_results.py",
                              description="Print (and optionally collect) the AP and matched-cost tables.")
    p.add_argument("results", metavar="RESULTS.json", nargs="?",
                   help="the results file (required unless --runs is given)")
    p.add_argument("--runs", nargs="+", default=[], metavar="[NAME=]DIR",
                   help="tabulate the evaluations found in these run folders")
    p.add_argument("--write", metavar="RESULTS.json", help="with --runs: save the rows here")
    p.add_argument("--collect", nargs="+", action="extend", default=[], metavar="NAME=SRC",
                   help="add NAME's metrics read from SRC to RESULTS.json first (repeat NAME "
                        "for several runs)")
    p.add_argument("--matched-cost", nargs="+", action="extend", default=[], metavar="NAME=FILE",
                   help="add NAME's matched costs (measure_matched_cost.py output) first")
    p.add_argument("--baseline", default="student", help="model subtracted in the last row")
    p.add_argument("--distilled", default="mgd", help="model the baseline is subtracted from")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.runs:
        return _main_runs(args)
    if not args.results:
        raise ResultsError("give RESULTS.json, or --runs with run folders")
    changes = bool(args.collect or args.matched_cost)
    results = load_results(args.results, missing_ok=changes)
    if changes:
        collect(results, args.collect, args.matched_cost)
        write_results(results, args.results)
    if not models(results):
        raise ResultsError(f"results file {args.results!r} holds no models")
    print(format_table(results, args.baseline, args.distilled, args.markdown))
    _warn_teacher_gap(results, args.baseline)
    costs = format_cost_table(results, args.baseline, args.distilled, args.markdown)
    if costs:
        print("\nMean matched cost to the teacher (2 - 2 cos per channel; lower = closer):")
        print(costs)
    return 0


def _main_runs(args):
    results, notes = collect_runs(parse_runs(args.runs))
    if args.write:
        os.makedirs(os.path.dirname(os.path.abspath(args.write)), exist_ok=True)
        write_results(results, args.write)
    for note in notes:
        print(note)
    if models(results):
        print(format_run_table(results, args.baseline, args.distilled, args.markdown))
        _warn_teacher_gap(results, args.baseline)
    costs = format_cost_table(results, args.baseline, args.distilled, args.markdown)
    if costs:
        print("\nMean matched cost to the teacher (2 - 2 cos per channel; lower = closer):")
        print(costs)
    return 0


def _warn_teacher_gap(results, baseline):
    warning = teacher_gap_warning(results, baseline)
    if warning:
        print(warning)


if __name__ == "__main__":
    sys.exit(run_cli(main))
