#!/usr/bin/env python
"""Collect COCO box AP of several models into one JSON file and print a results table.

    python scripts/summarize_results.py RESULTS.json [--collect NAME=SRC ...] \
        [--baseline student] [--distilled mgd] [--markdown]

RESULTS.json format (written by the demo; AP values in percent, as Detectron2 prints them)::

    {
      "teacher": {"AP": 10.66, "AP50": 20.10, "AP75": 9.65},
      "student": {"AP": 8.14,  "AP50": 17.27, "AP75": 6.14},
      "mgd":     {"AP": 7.99,  "AP50": 17.26, "AP75": 5.32}
    }

Models are printed in file order; extra keys (e.g. "APs", "weights", "iters") are kept and
ignored. If both the baseline ("student") and the distilled model ("mgd") are present, a last
row "MGD - student" gives their difference.

--collect NAME=SRC adds or replaces NAME in RESULTS.json (written atomically) before printing.
SRC may be: a JSON file in the per-model form above (``{"AP": ..}``); the dict Detectron2's
``Trainer.test`` returns, dumped as JSON (``{"bbox": {"AP": ..}}``); or a Detectron2
``metrics.json`` (or its folder), whose last line holding ``bbox/AP`` is used.
"""

import json
import math
import os
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root: mgd

from mgd.checkpoint import CheckpointError, atomic_write  # noqa: E402
from mgd.cli import OneLineArgumentParser  # noqa: E402

METRICS = ("AP", "AP50", "AP75")


class ResultsError(Exception):
    """A user-facing problem with a results file (one line)."""


def _metrics_from(obj, src):
    """The {"AP", "AP50", "AP75", ...} dict found in a loaded JSON object, or None."""
    if isinstance(obj, dict):
        if all(k in obj for k in METRICS):
            return {k: v for k, v in obj.items() if not isinstance(v, (dict, list))}
        if isinstance(obj.get("bbox"), dict) and all(k in obj["bbox"] for k in METRICS):
            return dict(obj["bbox"])
        if all(f"bbox/{k}" in obj for k in METRICS):
            return {k.split("/", 1)[1]: v for k, v in obj.items() if k.startswith("bbox/")}
    return None


def read_metrics_source(src):
    """AP metrics of one model from SRC (see module docstring). Raises ResultsError."""
    path = src
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    if not os.path.isfile(path):
        raise ResultsError(f"results source {src!r} not found (expected a JSON file or a "
                           "folder with metrics.json)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        found = _metrics_from(json.loads(text), src)
    except json.JSONDecodeError:
        found = None
        # metrics.json: one JSON object per line; use the last evaluation line
        for line in reversed(text.splitlines()):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            found = _metrics_from(rec, src)
            if found is not None:
                break
    if found is None:
        raise ResultsError(f"no box AP/AP50/AP75 in {path!r}; evaluate the model first "
                           "(train_net.py --eval-only)")
    for k in METRICS:
        if not isinstance(found[k], (int, float)):
            raise ResultsError(f"{path!r}: {k} is not a number ({found[k]!r})")
    return found


def load_results(path, missing_ok=False):
    """The results dict of RESULTS.json (model name -> metrics), in file order."""
    if not os.path.exists(path):
        if missing_ok:
            return OrderedDict()
        raise ResultsError(f"results file {path!r} not found; create it with --collect "
                           "NAME=SRC or run the demo's evaluation first")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=OrderedDict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read results file {path!r}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ResultsError(f"results file {path!r} is not of the form "
                           '{"model": {"AP": .., "AP50": .., "AP75": ..}, ...}')
    return data


def delta_row(results, baseline="student", distilled="mgd"):
    """{metric: distilled - baseline} or None if either is missing."""
    if baseline not in results or distilled not in results:
        return None
    out = {}
    for k in METRICS:
        a, b = results[distilled].get(k), results[baseline].get(k)
        out[k] = (a - b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None
    return out


def _fmt(v, signed=False):
    if not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def format_table(results, baseline="student", distilled="mgd", markdown=False):
    rows = [(name, [_fmt(m.get(k)) for k in METRICS]) for name, m in results.items()]
    delta = delta_row(results, baseline, distilled)
    if delta is not None:
        label = f"{'MGD' if distilled == 'mgd' else distilled} - {baseline}"
        rows.append((label, [_fmt(delta[k], signed=True) for k in METRICS]))
    if markdown:
        lines = ["| model | " + " | ".join(METRICS) + " |",
                 "|---|" + "---:|" * len(METRICS)]
        lines += [f"| {name} | " + " | ".join(vals) + " |" for name, vals in rows]
        return "\n".join(lines)
    width = max([len("model")] + [len(name) for name, _ in rows])
    lines = [f"{'model':<{width}}  " + "  ".join(f"{k:>7}" for k in METRICS)]
    lines += [f"{name:<{width}}  " + "  ".join(f"{v:>7}" for v in vals) for name, vals in rows]
    return "\n".join(lines)


def write_results(results, path):
    data = (json.dumps(results, indent=2) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data), what="results file")


def build_parser():
    p = OneLineArgumentParser(prog="summarize_results.py",
                              description="Print (and optionally collect) the AP table.")
    p.add_argument("results", metavar="RESULTS.json")
    p.add_argument("--collect", nargs="+", action="extend", default=[], metavar="NAME=SRC",
                   help="add NAME's metrics read from SRC to RESULTS.json first")
    p.add_argument("--baseline", default="student", help="model subtracted in the last row")
    p.add_argument("--distilled", default="mgd", help="model the baseline is subtracted from")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        results = load_results(args.results, missing_ok=bool(args.collect))
        if args.collect:
            for item in args.collect:
                name, sep, src = item.partition("=")
                if not sep or not name or not src:
                    raise ResultsError(f"--collect takes NAME=SRC, got {item!r}")
                results[name] = read_metrics_source(src)
            write_results(results, args.results)
        if not results:
            raise ResultsError(f"results file {args.results!r} holds no models")
        print(format_table(results, args.baseline, args.distilled, args.markdown))
    except (ResultsError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
