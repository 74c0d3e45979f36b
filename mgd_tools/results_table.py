"""The AP and matched-cost tables of several models: reading evaluations, aggregating seeds, formatting.

Command line: scripts/summarize_results.py (its docstring has the formats).
"""
import json
import math
import os
from collections import OrderedDict


from mgd.checkpoint import atomic_write
from mgd.errors import UserError

from .stats import summary

METRICS = ("AP", "AP50", "AP75")


class ResultsError(UserError):
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


#: top-level keys of RESULTS.json that are not models
COST_KEYS = ("matched_cost", "matched_cost_std", "matched_cost_runs")


def load_results(path, missing_ok=False):
    """The results dict of RESULTS.json (model name -> metrics, plus COST_KEYS), in file order."""
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


def models(results):
    """The model rows of a results dict (without the matched-cost sections)."""
    return OrderedDict((k, v) for k, v in results.items() if k not in COST_KEYS)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mean_and_std(values):
    """(mean, sample standard deviation with n - 1; None for one value) of finite numbers;
    (None, None) if any value is missing or not finite."""
    if not values or not all(_number(v) for v in values):
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(runs, keys):
    """One entry from several runs' dicts: the mean of each key, and with several runs
    "std" ({key: sample std}), "n" and "runs" (the dicts as given)."""
    if len(runs) == 1:
        return OrderedDict(runs[0])
    entry = OrderedDict()
    std = OrderedDict()
    for k in keys:
        entry[k], std[k] = mean_and_std([r.get(k) for r in runs])
    entry.update(std=std, n=len(runs), runs=list(runs))
    return entry


def _runs_of(entry):
    """The per-run dicts behind an entry (the entry itself for a single run)."""
    return entry.get("runs") or [entry]


def delta_row(results, baseline="student", distilled="mgd"):
    """{metric: distilled - baseline} or None if either is missing, plus "n" (runs paired).
    With paired runs (the same number of each, paired in the order given), the mean of the
    per-run differences, their sample std under "std" and the 95 % t-interval of the mean under
    "ci95" ({metric: [low, high]}); with one run each, the difference alone (n 1: no spread)."""
    if baseline not in results or distilled not in results:
        return None
    base, dist = _runs_of(results[baseline]), _runs_of(results[distilled])
    paired = len(base) == len(dist) and len(base) > 1
    out, std, ci95 = {}, {}, {}
    for k in METRICS:
        if paired:
            diffs = [d.get(k) - b.get(k) if _number(d.get(k)) and _number(b.get(k)) else None
                     for b, d in zip(base, dist)]
            if all(_number(x) for x in diffs):
                stats = summary(diffs)
                out[k], std[k], ci95[k] = stats["mean"], stats["sd"], stats["ci95"]
            else:
                out[k] = std[k] = ci95[k] = None
        else:
            a, b = results[distilled].get(k), results[baseline].get(k)
            out[k] = (a - b) if _number(a) and _number(b) else None
    out["n"] = len(base) if paired else 1
    if paired:
        out.update(std=std, ci95=ci95)
    return out


def delta_label(delta, baseline="student", distilled="mgd"):
    """The row name of a difference: what it is computed from."""
    name = f"{'MGD' if distilled == 'mgd' else distilled} - {baseline}"
    if delta.get("n", 1) > 1:
        return f"{name} (paired over {delta['n']} runs: mean ± sd [95 % CI])"
    return f"{name} (one run each: no spread)"


def teacher_gap_warning(results, baseline="student", margin=2.0):
    """One warning line when the teacher's AP is less than ``margin`` above the plain student's
    (the rows "teacher" or "NAME (teacher)"), else None."""
    rows = models(results)
    teachers = [m for name, m in rows.items() if name == "teacher" or name.endswith("(teacher)")
                or m.get("network") == "teacher"]
    student = rows.get(baseline)
    if not teachers or student is None or not _number(teachers[0].get("AP")) or not _number(student.get("AP")):
        return None
    gap = teachers[0]["AP"] - student["AP"]
    if gap >= margin:
        return None
    return (f"warning: the teacher is {gap:+.2f} AP ahead of the plain student ({baseline}), less than {margin:g}: "
            "it has little to teach (the paper's teacher was 4.9 AP ahead; docs/study.md)")


def _fmt(v, signed=False, std=None, digits=2):
    if not _number(v):
        return "-"
    text = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return text + (f" ± {std:.{digits}f}" if _number(std) else "")


def _table(header, rows, markdown):
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        lines += ["| " + " | ".join([name] + vals) + " |" for name, vals in rows]
        return "\n".join(lines)
    width = max([len(header[0])] + [len(name) for name, _ in rows])
    cols = [max([len(header[i + 1])] + [len(vals[i]) for _, vals in rows])
            for i in range(len(header) - 1)]
    lines = [f"{header[0]:<{width}}  " + "  ".join(f"{h:>{c}}" for h, c in zip(header[1:], cols))]
    lines += [f"{name:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(vals, cols))
              for name, vals in rows]
    return "\n".join(lines)


def format_table(results, baseline="student", distilled="mgd", markdown=False):
    """The AP table: one row per model (mean ± std over its runs), then MGD - student."""
    rows = []
    for name, m in models(results).items():
        std = m.get("std") or {}
        label = f"{name} ({m['n']} runs)" if m.get("n") else name
        rows.append((label, [_fmt(m.get(k), std=std.get(k)) for k in METRICS]))
    delta = delta_row(results, baseline, distilled)
    if delta is not None:
        std, ci95 = delta.get("std") or {}, delta.get("ci95") or {}
        rows.append((delta_label(delta, baseline, distilled),
                     [_fmt(delta[k], signed=True, std=std.get(k)) + _interval(ci95.get(k)) for k in METRICS]))
    return _table(["model"] + list(METRICS), rows, markdown)


def _interval(ci):
    return f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci and all(_number(x) for x in ci) else ""


def _position_key(name):
    return (name[:1], int(name[1:]) if name[1:].isdigit() else 0, name)


def format_cost_table(results, baseline="student", distilled="mgd", markdown=False):
    """The matched-cost table (position rows, one column per model, the relative change of
    ``distilled`` against ``baseline``), or "" when RESULTS has no matched costs."""
    costs = results.get("matched_cost") or {}
    if not costs:
        return ""
    spreads = results.get("matched_cost_std") or {}
    names = list(costs)
    positions = sorted({p for c in costs.values() for p in c}, key=_position_key)
    rows = []
    for p in positions:
        vals = [_fmt(costs[n].get(p), std=(spreads.get(n) or {}).get(p), digits=3) for n in names]
        if baseline in costs and distilled in costs:
            a, b = costs[distilled].get(p), costs[baseline].get(p)
            vals.append(f"{100 * (a - b) / b:+.0f} %" if _number(a) and _number(b) and b else "-")
        rows.append((p, vals))
    header = ["position"] + names
    if baseline in costs and distilled in costs:
        header.append(f"{distilled} vs {baseline}")
    return _table(header, rows, markdown)


def _read_cost_file(src):
    """{position: cost} of a measure_matched_cost.py output file."""
    try:
        with open(src, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"matched-cost file {src!r} not found; run "
                           "scripts/measure_matched_cost.py first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read matched-cost file {src!r}: {exc}") from None
    costs = data.get("costs") if isinstance(data, dict) else None
    if not isinstance(costs, dict) or not costs or not all(_number(v) for v in costs.values()):
        raise ResultsError(f"{src!r} holds no finite per-position costs "
                           '({"costs": {"c2": .., ...}}, as measure_matched_cost.py writes)')
    return OrderedDict(costs)


def _pairs(items, flag):
    """[(NAME, [SRC, ...])] in first-seen order, from NAME=SRC items (a NAME may repeat)."""
    grouped = OrderedDict()
    for item in items:
        name, sep, src = item.partition("=")
        if not sep or not name or not src:
            raise ResultsError(f"{flag} takes NAME=SRC, got {item!r}")
        if name in COST_KEYS:
            raise ResultsError(f"{flag}: {name!r} is a reserved name")
        grouped.setdefault(name, []).append(src)
    return list(grouped.items())


def collect(results, metric_items=(), cost_items=()):
    """Add the --collect and --matched-cost sources to ``results`` (in place)."""
    for name, srcs in _pairs(metric_items, "--collect"):
        results[name] = aggregate([read_metrics_source(s) for s in srcs], METRICS)
    for name, srcs in _pairs(cost_items, "--matched-cost"):
        runs = [_read_cost_file(s) for s in srcs]
        entry = aggregate(runs, list(runs[0]))
        for key in COST_KEYS:
            results.setdefault(key, OrderedDict()).pop(name, None)
        if len(runs) > 1:
            results["matched_cost_std"][name] = entry.pop("std")
            results["matched_cost_runs"][name] = entry.pop("runs")
            entry.pop("n")
        results["matched_cost"][name] = entry
    for key in COST_KEYS:  # no empty sections
        if key in results and not results[key]:
            del results[key]
    return results


def parse_runs(items):
    """[(name, folder)] from "NAME=DIR" or "DIR" items (a bare DIR is named after its folder).
    A name given several times names runs of one model (seeds): their rows are averaged, and
    paired with another model's runs in the order given. ResultsError for a reserved name."""
    runs = []
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep:
            name, folder = os.path.basename(os.path.normpath(item)), item
        if not name or not folder:
            raise ResultsError(f"--runs takes NAME=DIR or DIR, got {item!r}")
        if name in COST_KEYS:
            raise ResultsError(f"run name {name!r} is reserved; name the runs: NAME=DIR")
        runs.append((name, folder))
    return runs


def _evaluation_files(folder):
    """eval_results.json in ``folder`` and its direct subfolders (not previous-N), sorted."""
    found = []
    if os.path.isfile(os.path.join(folder, "eval_results.json")):
        found.append(os.path.join(folder, "eval_results.json"))
    for sub in sorted(os.listdir(folder)):
        path = os.path.join(folder, sub, "eval_results.json")
        if not sub.startswith("previous-") and os.path.isfile(path):
            found.append(path)
    return found


def _evaluation_rows(path):
    """[(dataset or None, metrics, provenance)] of one eval_results.json (one per dataset)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read {path!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path!r} is not an evaluation's results (a JSON object)")
    about = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
    found = _metrics_from(data, path)
    if found is not None:
        names = [d.get("name") for d in about.get("datasets") or [] if isinstance(d, dict)]
        return [(names[0] if len(names) == 1 else None, found, about)]
    rows = [(key, _metrics_from(value, path), about) for key, value in data.items() if key != "provenance"]
    return [row for row in rows if row[1] is not None]


def run_evaluations(name, folder):
    """[(label, metrics with "source", "dataset", "weights", "network")] of a run folder; []
    when it holds no evaluation."""
    if not os.path.isdir(folder):
        raise ResultsError(f"run folder {folder!r} not found")
    rows = []
    for path in _evaluation_files(folder):
        for dataset, metrics, about in _evaluation_rows(path):
            network = about.get("network") or ("teacher" if "teacher" in os.path.basename(os.path.dirname(path))
                                               else "student")
            weights = (about.get("weights") or {}).get("path")
            sha = (about.get("weights") or {}).get("sha256")
            entry = {k: metrics[k] for k in METRICS}
            entry.update(source=path, dataset=dataset, network=network,
                         weights=f"{weights} ({sha})" if weights and sha else weights)
            rel = os.path.relpath(os.path.dirname(path), folder)
            rows.append((rel, dataset, entry))
    if not rows and os.path.isfile(os.path.join(folder, "metrics.json")):
        try:
            metrics = read_metrics_source(folder)
        except ResultsError:
            return []
        entry = {k: metrics[k] for k in METRICS}
        entry.update(source=os.path.join(folder, "metrics.json"), dataset=None, network=None,
                     weights="the training's last evaluation")
        return [(name, entry)]
    labelled = []
    for rel, dataset, entry in rows:
        same = [r for r in rows if (r[2]["network"] == "teacher") == (entry["network"] == "teacher")]
        if len(same) == 1:
            label = f"{name} (teacher)" if entry["network"] == "teacher" else name
        else:
            label = name if rel == "." else f"{name}/{rel}"
            label += f" [{dataset}]" if dataset and len({r[1] for r in rows}) > 1 else ""
        labelled.append((label, entry))
    return labelled


#: the file ``make matched-cost`` writes into each run folder
MATCHED_COST_FILE = "matched_cost.json"


def collect_runs(runs):
    """(results dict {label: entry}, notes) of the evaluations found in [(name, folder)], and
    the matched costs (``matched_cost.json``) found in the folders. The runs of a name given
    several times are averaged row by row (``aggregate``: mean, "std", "n", "runs")."""
    folders = OrderedDict()
    for name, folder in runs:
        folders.setdefault(name, []).append(folder)
    results, notes, costs = OrderedDict(), [], OrderedDict()
    for name, paths in folders.items():
        found = []
        for folder in paths:
            rows = run_evaluations(name, folder)
            if not rows:
                notes.append(f"note: no evaluation in {folder} (no eval_results.json there or in a subfolder, "
                             "no bbox/AP in its metrics.json): evaluate it with `make eval`")
            found.append(OrderedDict(rows))
        labels = [list(rows) for rows in found if rows]
        if len(paths) > 1 and any(ls != labels[0] for ls in labels):
            raise ResultsError(f"the runs named {name!r} hold different evaluations ({'; '.join(map(str, labels))}): "
                               "runs of one name must be alike (seeds of one model)")
        for label in (labels[0] if labels else []):
            entry = aggregate([rows[label] for rows in found if rows], METRICS)
            while label in results:
                label += "'"
            results[label] = entry
        cost_files = [os.path.join(folder, MATCHED_COST_FILE) for folder in paths]
        present = [f for f in cost_files if os.path.isfile(f)]
        if present and len(present) < len(paths):
            notes.append(f"note: {name}: {len(present)} of its {len(paths)} runs have a {MATCHED_COST_FILE}; "
                         "their matched costs are left out (`make matched-cost` measures them all)")
        elif present:
            costs[name] = present
    datasets = {e.get("dataset") for e in results.values() if e.get("dataset")}
    if len(datasets) > 1:
        notes.append(f"note: these rows were evaluated on different datasets ({', '.join(sorted(datasets))}); "
                     "compare APs on the same one")
    collect(results, (), [f"{name}={f}" for name, files in costs.items() for f in files])
    return results, notes


def format_run_table(results, baseline="student", distilled="mgd", markdown=False):
    """The AP table of collect_runs' rows, with what each evaluated and where it was found."""
    table = format_table(results, baseline, distilled, markdown)
    lines = ["", "Rows:"]
    for label, entry in models(results).items():
        for run in _runs_of(entry):
            what = ", ".join(x for x in (run.get("network"), run.get("weights")) if x)
            on = f" on {run['dataset']}" if run.get("dataset") else ""
            lines.append(f"  {label}: {what}{on}; {run.get('source')}")
    return table + "\n" + "\n".join(lines)


def write_results(results, path):
    data = (json.dumps(results, indent=2) + "\n").encode("utf-8")
    atomic_write(path, lambda f: f.write(data), what="results file")
