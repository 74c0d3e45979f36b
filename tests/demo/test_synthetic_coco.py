"""The synthetic COCO-format set: deterministic, valid COCO, boxes = visible parts."""

import json
import os
import sys
import time

import numpy as np
import pytest

from scripts_support import run_script

from mgd_tools import synthetic_coco as sc


@pytest.fixture(scope="module")
def full_set(tmp_path_factory):
    """The default set (320 train / 120 val, 128x128, seed 0), made by the real CLI."""
    out = tmp_path_factory.mktemp("synth") / "mgd_synth"
    start = time.perf_counter()
    proc = run_script("make_synthetic_coco.py", "--out", out, "--seed", "0")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    return out, elapsed, proc.stdout


def _load(root, split):
    with open(root / "annotations" / f"instances_{split}.json") as f:
        return json.load(f)


def test_layout_and_counts(full_set):
    root, _, stdout = full_set
    assert "train 320 images" in stdout and "val 120 images" in stdout
    assert sorted(os.listdir(root)) == ["annotations", "synthetic.json", "train", "val"]
    assert len(os.listdir(root / "train")) == 320 and len(os.listdir(root / "val")) == 120
    assert not [n for n in os.listdir(root.parent) if n.startswith(".")]  # no temp folders


def test_valid_coco_that_pycocotools_loads_and_evaluates(full_set):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root = full_set[0]
    gt = COCO(str(root / "annotations" / "instances_val.json"))
    assert sorted(gt.getCatIds()) == [1, 2, 3, 4]
    assert len(gt.getImgIds()) == 120
    # the ground truth scored against itself is perfect: the format is what COCOeval expects
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in gt.dataset["annotations"]]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


def test_annotations_are_consistent(full_set):
    root = full_set[0]
    for split, n in (("train", 320), ("val", 120)):
        coco = _load(root, split)
        assert {c["id"]: c["name"] for c in coco["categories"]} == {
            1: "red_circle", 2: "blue_circle", 3: "red_square", 4: "blue_triangle"}
        ids = [im["id"] for im in coco["images"]]
        assert ids == list(range(1, n + 1))
        ann_ids = [a["id"] for a in coco["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=n + 1)[1:]
        assert per_image.max() <= 4 and (per_image >= 1).mean() > 0.98
        cats = np.bincount([a["category_id"] for a in coco["annotations"]], minlength=5)[1:]
        assert cats.min() > 0.15 * cats.sum()  # every class is well represented
        for im in coco["images"]:
            assert (root / split / im["file_name"]).is_file()
            assert im["width"] == im["height"] == 128
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            assert w >= 1 and h >= 1 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
            assert 0 < a["area"] <= w * h
            assert a["iscrowd"] == 0 and a["category_id"] in (1, 2, 3, 4)
            assert a["visible_fraction"] >= 0.55


def test_sizes_span_small_to_large(full_set):
    coco = _load(full_set[0], "train")
    sides = np.array([max(a["bbox"][2], a["bbox"][3]) for a in coco["annotations"]])
    assert sides.min() < 14 and sides.max() > 45
    assert (sides < 20).mean() > 0.15  # log-uniform sizes: many small objects


def test_box_is_the_visible_part_and_visibility_rule():
    """Re-draw images with the owner map exposed and check every annotation against it."""
    cfg = sc.SynthConfig()
    occluded = 0
    for i in range(60):
        rng = np.random.default_rng([cfg.seed, 0, i])
        img, anns, owner, placed = sc.generate_image(rng, cfg, return_layers=True)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        labelled = [k for k, p in enumerate(placed) if p.label is not None]
        assert len(anns) == len(labelled)
        for ann, k in zip(anns, labelled):
            rows, cols = np.nonzero(owner == k)
            assert ann["area"] == rows.size
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() + 1 - cols.min(),
                                   rows.max() + 1 - rows.min()]
            assert rows.size >= 0.55 * placed[k].full_area
            occluded += rows.size < placed[k].full_area
    assert occluded > 0  # occlusion really happens


def test_same_seed_same_bytes_and_prefix_stable(tmp_path, full_set):
    small = sc.SynthConfig(num_train=12, num_val=4)
    for name in ("a", "b"):
        sc.write_dataset(tmp_path / name, small)
    for rel in ("annotations/instances_train.json", "annotations/instances_val.json",
                "train/000007.png", "val/000004.png", "synthetic.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    # the first images do not depend on how many are generated
    full = full_set[0]
    assert (tmp_path / "a" / "train/000012.png").read_bytes() == \
        (full / "train/000012.png").read_bytes()
    sc.write_dataset(tmp_path / "c", sc.SynthConfig(seed=1, num_train=12, num_val=4))
    assert (tmp_path / "a/annotations/instances_train.json").read_bytes() != \
        (tmp_path / "c/annotations/instances_train.json").read_bytes()


# The demo's set (96 px, objects 8-42 px), first 24 images of each split, as generated by the
# version of generate_image before it was split into steps (git show 10887d4:scripts/
# synthetic_coco.py, run on the same inputs): annotations exactly, pixels summed.
PINNED_DEMO_ANNOTATIONS_SHA256 = "66d7b6e8352897766f9732f40cbbbb09fb375eeef86b6ae66bc53d65107a1c72"
PINNED_DEMO_PIXEL_SUM = 181484775


def test_generated_content_is_pinned():
    """Refactors of the generator must keep the data: same boxes, same pixels. The pixel sum
    allows a few grey levels for exp/sin rounding that differs between CPUs' math libraries."""
    import hashlib

    cfg = sc.SynthConfig(size=96, min_object=8, max_object=42)
    annotations, pixel_sum = [], 0
    for split in (0, 1):
        for i in range(24):
            img, anns = sc.generate_image(np.random.default_rng([cfg.seed, split, i]), cfg)
            annotations.append(anns)
            pixel_sum += int(img.astype(np.int64).sum())
    digest = hashlib.sha256(json.dumps(annotations, sort_keys=True).encode()).hexdigest()
    assert digest == PINNED_DEMO_ANNOTATIONS_SHA256
    assert abs(pixel_sum - PINNED_DEMO_PIXEL_SUM) <= 50


def test_rewrite_replaces_own_set_atomically(tmp_path):
    out = tmp_path / "s"
    sc.write_dataset(out, sc.SynthConfig(num_train=5, num_val=2))
    sc.write_dataset(out, sc.SynthConfig(num_train=3, num_val=1))
    assert len(os.listdir(out / "train")) == 3
    assert sorted(os.listdir(tmp_path)) == ["s"]  # no temp or old folders left



def test_missing_parent_folders_are_created(tmp_path):
    """`--out datasets/mine` in a fresh clone (no datasets/ yet) writes the set, as mkdir -p would."""
    out = tmp_path / "datasets" / "deeper" / "mine"
    proc = run_script("make_synthetic_coco.py", "--out", out, "--train", "2", "--val", "1", "--size", "64")
    assert proc.returncode == 0, proc.stderr
    assert len(os.listdir(out / "train")) == 2 and len(os.listdir(out / "val")) == 1
