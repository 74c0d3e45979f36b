"""Evaluation results as strict JSON, and one line when a model predicted nothing.

Detectron2's COCO evaluator reports every AP as NaN when the model returned no box (and
``{}`` when it saw no image); JSON has no NaN, so those are written as ``null``.
"""
import json
import logging
import math
import os
from typing import Any, List

__all__ = ["strict_json_value", "save_results", "datasets_without_predictions", "report_empty"]


def strict_json_value(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) replaced by None, dicts and lists copied."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    return value


def save_results(results: dict, path: str) -> None:
    """Write ``results`` ({dataset or task: {metric: value}}) as strict JSON, atomically."""
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
