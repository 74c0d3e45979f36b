"""The pinned Detectron2's COCOEvaluator (its C++ COCOeval_opt) against pycocotools' COCOeval.

`make eval` reports the pin's numbers; they are the paper's metric only if the fast C++
evaluation equals the reference COCO API. The pin's own test of this fails on today's
pycocotools for a reason in its set-up (tests/detectron2_expected_failures.pin.txt), so it is
checked here on detections of the kind a detector makes: localised with varied IoU, some of
the wrong class, duplicates, and false positives, with distinct scores (no tie-breaking).
"""
import contextlib
import copy
import io
import json
import uuid

import numpy as np
import pytest

from d2_support import make_synthetic_dataset

pytestmark = pytest.mark.detectron2

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _q(x):
    """Round to 1/8 px: exact in float32, so the pin's float32 boxes equal the reference's."""
    return np.round(np.asarray(x, dtype=np.float64) * 8) / 8


def synthetic_detections(gt: dict, seed: int = 0) -> list:
    """COCO-format detections (XYWH, dataset category ids) for the images of ``gt``."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    dets = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(rng.integers(0, 3)):  # 0 (missed), 1, or 2 (duplicate) detections
            jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
            category = ann["category_id"] if rng.random() < 0.8 else int(rng.choice(cat_ids))
            dets.append({"image_id": ann["image_id"], "category_id": category,
                         "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)]})
    for image_id, (width, height) in sizes.items():  # false positives
        for _ in range(rng.integers(0, 4)):
            w, h = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            dets.append({"image_id": image_id, "category_id": int(rng.choice(cat_ids)),
                         "bbox": [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]})
    scores = np.float32((rng.permutation(len(dets)) + 1) / (len(dets) + 1))  # distinct
    for det, score in zip(dets, scores):
        det["bbox"] = [float(v) for v in _q(det["bbox"])]
        det["score"] = float(score)
    return dets


def reference_stats(json_file: str, dets: list) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(json_file)
        coco_eval = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {m: 100 * float(coco_eval.stats[i]) for i, m in enumerate(METRICS)}


def pin_stats(json_file: str, image_root: str, dets: list) -> dict:
    """The same detections through the pin's COCOEvaluator, as model outputs (XYXY, contiguous classes)."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.mgd_compat import coco_evaluator

    name = f"test_pin_coco_eval_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, json_file, image_root)
    DatasetCatalog.get(name)  # loads the json: sets the dataset-id -> contiguous-id metadata
    to_contiguous = MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id
    evaluator = coco_evaluator(name, get_cfg(), output_dir=None)  # one process: nothing to gather
    evaluator.reset()
    images = {im["id"]: im for im in json.load(open(json_file))["images"]}
    for image_id, image in images.items():
        mine = [d for d in dets if d["image_id"] == image_id]
        instances = Instances((image["height"], image["width"]))
        xywh = torch.tensor([d["bbox"] for d in mine], dtype=torch.float32).reshape(-1, 4)
        instances.pred_boxes = Boxes(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1))
        instances.scores = torch.tensor([d["score"] for d in mine], dtype=torch.float32)
        instances.pred_classes = torch.tensor([to_contiguous[d["category_id"]] for d in mine], dtype=torch.int64)
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    results = evaluator.evaluate()["bbox"]  # once: evaluate() maps the stored category ids in place
    return {m: results[m] for m in METRICS}


@pytest.mark.parametrize("seed", [0, 1])
def test_pin_coco_evaluator_equals_pycocotools(tmp_path, seed):
    root = make_synthetic_dataset(tmp_path / "synth", train=1, val=24, size=96)
    json_file = str(root / "annotations" / "instances_val.json")
    dets = synthetic_detections(json.load(open(json_file)), seed)
    expected = reference_stats(json_file, dets)
    assert 5 < expected["AP"] < 95, f"detections too easy or too hard to tell evaluations apart: {expected}"
    got = pin_stats(json_file, str(root / "val"), dets)
    for metric in METRICS:
        if np.isnan(expected[metric]) or expected[metric] < 0:  # no objects of that size: -1 from COCOeval
            assert np.isnan(got[metric]), (metric, got[metric])
        else:
            assert got[metric] == pytest.approx(expected[metric], abs=1e-4), (metric, got, expected)
