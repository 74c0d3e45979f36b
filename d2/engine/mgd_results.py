"""Evaluation results that say what they are, kept from one evaluation to the next.

* :func:`save_results`: strict JSON (Detectron2's COCO evaluator reports every AP as NaN when
  the model returned no box, ``{}`` when it saw no image; those are written as ``null``),
  with a ``"provenance"`` entry (:func:`provenance`): the weights (path, size, a short
  SHA-256), the evaluated network, the config file and overrides, the datasets with their
  image and annotation counts, this code's and the Detectron2 checkout's git commits;
* :func:`keep_earlier_evaluation`: before an evaluation writes into a folder that holds one,
  its ``eval_results.json``, ``inference/`` and ``config.yaml`` move to ``previous-N/``;
* :func:`report_empty`: one line when a model predicted nothing.

``mgd_evaluation.evaluate`` (``train_net.py --eval-only``) writes its results through them.
"""
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional

__all__ = ["strict_json_value", "save_results", "datasets_without_predictions", "report_empty",
           "provenance", "file_digest", "git_commit", "keep_earlier_evaluation", "EVALUATION_FILES"]

#: what an evaluation writes into its OUTPUT_DIR (log.txt is appended to, never replaced)
EVALUATION_FILES = ("eval_results.json", "inference", "config.yaml")
#: hex digits of the SHA-256 kept in the results
SHORT_HASH = 12


def strict_json_value(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, dicts and lists copied."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    return value


def save_results(results: dict, path: str, about: Optional[dict] = None) -> None:
    """Write ``results`` ({dataset or task: {metric: value}}) as strict JSON, atomically;
    ``about`` (:func:`provenance`), if given, under the key ``"provenance"``."""
    results = dict(results, provenance=about) if about is not None else results
    text = json.dumps(strict_json_value(results), indent=2, allow_nan=False)
    partial = path + ".part"
    with open(partial, "w") as f:
        f.write(text + "\n")
    os.replace(partial, path)


def _all_undefined(metrics: Any) -> bool:
    if isinstance(metrics, dict):
        return not metrics or all(_all_undefined(v) for v in metrics.values())
    return isinstance(metrics, float) and math.isnan(metrics)


def datasets_without_predictions(results: dict, dataset_names: List[str]) -> List[str]:
    """The datasets whose results are empty or all NaN: the model predicted no box there.

    ``results`` is ``DefaultTrainer.test``'s value: {dataset: {task: {metric: value}}}, or
    the inner {task: ...} alone when there is one dataset.
    """
    if len(dataset_names) == 1 and set(results) != set(dataset_names):
        results = {dataset_names[0]: results}
    return [name for name in dataset_names if _all_undefined(results.get(name, {}))]


def report_empty(results: dict, dataset_names: List[str], score_threshold: float) -> List[str]:
    """Log one line per dataset without predictions; returns those datasets."""
    empty = datasets_without_predictions(results, dataset_names)
    for name in empty:
        logging.getLogger("detectron2").warning(
            f"no predictions on {name}: the model returned no box scoring above "
            f"MODEL.RETINANET.SCORE_THRESH_TEST {score_threshold:g}; its AP is undefined (null in the results file)")
    return empty


def file_digest(path: str) -> str:
    """The first SHORT_HASH hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:SHORT_HASH]


def git_commit(folder: str) -> Optional[Dict[str, Any]]:
    """{"commit": HEAD, "modified": tracked files differ from it} of the git checkout at
    ``folder``; None when it is not one (or git is missing)."""
    def git(*args):
        return subprocess.run(["git", "-C", folder, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, timeout=30, check=True).stdout.strip()
    try:
        if os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(folder):
            return None  # a folder inside another repository, not a checkout of its own
        return {"commit": git("rev-parse", "HEAD"),
                "modified": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(weights: str, config_file: str, overrides: List[str], datasets: List[dict], code_dir: str,
               network: str) -> dict:
    """What an evaluation evaluated, for its results file.

    Args:
        weights: the checkpoint loaded (``MODEL.WEIGHTS``, or the resumed run's last one).
        config_file, overrides: the command line's ``--config-file`` and KEY VALUE pairs.
        datasets: ``mgd_datasets.dataset_sizes`` of each set in ``DATASETS.TEST``.
        code_dir: this repository's folder (its git commit is recorded).
        network: "student", "teacher" (of an MGD config) or "retinanet".
    """
    import detectron2

    about_weights = {"path": os.path.abspath(weights) if os.path.isfile(weights) else weights}
    if os.path.isfile(weights):
        about_weights.update(bytes=os.path.getsize(weights), sha256=file_digest(weights))
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(detectron2.__file__)))
    return {
        "weights": about_weights,
        "network": network,
        "config_file": os.path.abspath(config_file),
        "overrides": [str(x) for x in overrides],
        "datasets": datasets,
        "code": git_commit(code_dir),
        "detectron2": dict(git_commit(checkout) or {}, path=checkout),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }


def _describe(results_file: str) -> str:
    """'of WEIGHTS on DATASETS' from an earlier eval_results.json ('' if it does not say)."""
    try:
        with open(results_file) as f:
            about = json.load(f).get("provenance") or {}
        weights = about["weights"]["path"]
        names = ", ".join(d["name"] for d in about["datasets"])
        return f" of {weights} on {names}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""


def keep_earlier_evaluation(output_dir: str, replace: bool = False) -> Optional[str]:
    """Make room for an evaluation in ``output_dir``: an earlier one's files (EVALUATION_FILES
    that exist) move to ``output_dir/previous-N`` (N: the next free number), or with
    ``replace`` are deleted. Returns the line to tell the user, or None if there was none."""
    found = [name for name in EVALUATION_FILES if os.path.lexists(os.path.join(output_dir, name))]
    if not found:
        return None
    what = _describe(os.path.join(output_dir, "eval_results.json"))
    if replace:
        for name in found:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        return f"replaced the earlier evaluation{what} in {output_dir} ({', '.join(found)} deleted)"
    taken = [int(n.split("-", 1)[1]) for n in os.listdir(output_dir)
             if n.startswith("previous-") and n.split("-", 1)[1].isdigit()]
    target = os.path.join(output_dir, f"previous-{max(taken, default=0) + 1}")
    os.makedirs(target)
    for name in found:
        os.replace(os.path.join(output_dir, name), os.path.join(target, name))
    return (f"kept what an earlier run wrote here{what}: {', '.join(found)} moved to {target} "
            "(EVAL_REPLACE=1, train_net.py --replace-eval, replaces it instead)")
