"""Results files are strict JSON and a run with no predictions says so.
train_net.py end to end: tests/d2/test_train_net.py (an evaluation that predicts nothing)."""
import json
import math

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

from d2_support import import_overlay  # noqa: E402

import_overlay()

from detectron2.engine.mgd_results import datasets_without_predictions, save_results  # noqa: E402


def _strict_load(path):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_nan_and_inf_are_written_as_null(tmp_path):
    path = tmp_path / "eval_results.json"
    results = {"bbox": {"AP": float("nan"), "AP50": 12.5, "APl": float("inf"), "per": [1.0, float("-inf")]}}
    save_results(results, str(path))
    assert _strict_load(path) == {"bbox": {"AP": None, "AP50": 12.5, "APl": None, "per": [1.0, None]}}
    assert math.isnan(results["bbox"]["AP"])  # the caller's dict is left alone
    assert [p.name for p in tmp_path.iterdir()] == ["eval_results.json"]  # no .part left


def test_datasets_without_predictions():
    nan = float("nan")
    empty_bbox = {"bbox": {"AP": nan, "AP50": nan}}
    assert datasets_without_predictions(empty_bbox, ["val"]) == ["val"]  # one set: its results alone
    assert datasets_without_predictions({}, ["val"]) == ["val"]  # the evaluator saw no image
    assert datasets_without_predictions({"bbox": {"AP": nan, "AP50": 0.0}}, ["val"]) == []
    both = {"a": empty_bbox, "b": {"bbox": {"AP": 1.0}}}
    assert datasets_without_predictions(both, ["a", "b"]) == ["a"]
