"""The dataset checks: the usual COCO-format faults end a run with one
``error:`` line before anything is written, or one warning line where the pinned Detectron2
drops or clips the annotation anyway; what that Detectron2 does is tested here too.

``check_coco_set`` is framework-free (d2/data/mgd_coco_checks.py, imported from there); the
train_net.py / make tests and the pin's behaviour need Detectron2."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from d2_support import REPO, annotation, coco_set, run_train_net, save, write_image
from scripts_support import assert_refused, load_file

checks = load_file(REPO / "d2" / "data" / "mgd_coco_checks.py")  # framework-free: tested without Detectron2

R18_DEMO = REPO / "configs" / "demo_retinanet_R_18.yaml"


def check(root: Path, **kwargs):
    return checks.check_coco_set("mine", str(root / "set.json"), str(root / "images"), **kwargs)


# ------------------------------------------------------------------ check_coco_set, in process

def test_a_clean_set_passes_and_says_what_was_read(tmp_path):
    coco_set(tmp_path)
    result = check(tmp_path)
    assert (result.errors, result.warnings) == ([], [])
    assert (result.images, result.annotations, result.categories, result.sizes_read) == (6, 12, 3, 6)
    assert "6 images, 12 annotations, 3 categories checked" in result.summary()
    assert "a sample" not in result.summary()


def test_unknown_category_ids(tmp_path):
    data = coco_set(tmp_path)
    annotation(data, 20)["category_id"] = 9
    annotation(data, 31)["category_id"] = 12
    annotation(data, 41)["category_id"] = 9
    save(tmp_path, data)
    [error] = check(tmp_path).errors
    assert error.startswith("3 annotations have a category_id that is not in 'categories' (9, 12;")
    assert "'categories' has ids 1, 2, 3" in error and "first: annotation 20 in 0002.png" in error


def test_every_missing_image_is_counted_in_one_pass(tmp_path):
    coco_set(tmp_path)
    for i in (2, 3, 5, 6):
        os.remove(tmp_path / "images" / f"{i:04d}.png")
    result = check(tmp_path)
    assert result.errors == [f"4 of 6 images are missing under {tmp_path / 'images'} "
                             "(0002.png, 0003.png, 0005.png, ...)"]
    assert result.sizes_read == 2  # the sizes of those present are still checked


def test_images_in_subfolders_and_a_missing_subfolder(tmp_path):
    data = coco_set(tmp_path)
    (tmp_path / "images" / "a").mkdir()
    os.replace(tmp_path / "images" / "0001.png", tmp_path / "images" / "a" / "0001.png")
    data["images"][0]["file_name"] = "a/0001.png"
    data["images"][1]["file_name"] = "gone/0002.png"
    save(tmp_path, data)
    assert check(tmp_path).errors == [f"1 of 6 images are missing under {tmp_path / 'images'} (gone/0002.png)"]


def test_image_size_other_than_the_json_says(tmp_path):
    coco_set(tmp_path)
    write_image(tmp_path / "images" / "0003.png", 30, 40)  # transposed
    [error] = check(tmp_path).errors
    assert error.startswith("1 of 6 read images differ in size from the JSON's width x height "
                            "(0003.png is 30x40, the JSON says 40x30)")


def test_exif_orientation_is_honoured_as_detectron2_reads_the_image(tmp_path):
    """A JPEG stored 40x30 with EXIF orientation 6 (rotate 90) is 30x40 once read; the
    reference size comes from decoding it with PIL's own exif_transpose."""
    from PIL import Image, ImageOps

    data = coco_set(tmp_path, images=2)
    write_image(tmp_path / "images" / "rot.jpg", 40, 30, "JPEG", exif_orientation=6)
    with Image.open(tmp_path / "images" / "rot.jpg") as image:
        assert image.size == (40, 30)
        width, height = ImageOps.exif_transpose(image).size
    assert (width, height) == (30, 40)
    data["images"].append({"id": 3, "file_name": "rot.jpg", "width": width, "height": height})
    save(tmp_path, data)
    assert check(tmp_path).errors == []
    data["images"][-1].update(width=40, height=30)  # the stored size: wrong once rotated
    save(tmp_path, data)
    [error] = check(tmp_path).errors
    assert "rot.jpg is 30x40, the JSON says 40x30" in error


def test_a_file_that_is_no_image(tmp_path):
    coco_set(tmp_path)
    (tmp_path / "images" / "0004.png").write_bytes(b"not an image")
    [error] = check(tmp_path).errors
    assert error.startswith("1 of 6 read images cannot be read as images (0004.png: ")


def test_sizes_are_read_for_a_sample_of_large_sets(tmp_path, monkeypatch):
    """Above SIZE_SAMPLE images the sizes of SIZE_SAMPLE spread over the set are read; a
    mis-sized image outside the sample is then found only with all_sizes."""
    coco_set(tmp_path, images=10)
    monkeypatch.setattr(checks, "SIZE_SAMPLE", 5)
    sample = [p for p, _ in checks._spread([(i, None) for i in range(1, 11)], 5)]
    assert sample == [1, 3, 5, 7, 9]
    write_image(tmp_path / "images" / "0002.png", 20, 20)  # not in the sample
    result = check(tmp_path)
    assert result.errors == [] and result.sizes_read == 5
    assert "sizes of 5 images read (a sample; --check-all-images reads all 10)" in result.summary()
    result = check(tmp_path, all_sizes=True)
    assert result.sizes_read == 10 and "0002.png is 20x20" in result.errors[0]
    write_image(tmp_path / "images" / "0003.png", 20, 20)  # in the sample
    assert "0003.png is 20x20" in check(tmp_path).errors[0]


@pytest.mark.parametrize("trained, evaluated, effect", [
    (True, False, "training drops them (Detectron2's filter_empty_instances)"),
    (False, True, "COCO AP counts each as an object no detection can match"),
])
def test_empty_and_outside_boxes_are_one_warning(tmp_path, trained, evaluated, effect):
    data = coco_set(tmp_path)
    annotation(data, 10)["bbox"] = [5.0, 5.0, 0.0, 8.0]
    annotation(data, 21)["bbox"] = [5.0, 5.0, 6.0, 0.0]
    annotation(data, 30)["bbox"] = [41.0, 2.0, 5.0, 5.0]  # right of a 40-px-wide image
    annotation(data, 40)["bbox"] = [2.0, -9.0, 5.0, 9.0]  # ends at y = 0
    annotation(data, 50)["bbox"] = [5.0, 5.0, 0.0, 0.0]
    annotation(data, 50)["iscrowd"] = 1  # crowd regions are not trained on: not counted
    save(tmp_path, data)
    result = check(tmp_path, trained=trained, evaluated=evaluated)
    assert result.errors == []
    assert result.warnings == [f"boxes 2 of zero width or height (annotations 10, 21) and 2 entirely outside their "
                               f"image (annotations 30, 40): {effect}"]


def test_boxes_past_the_image_are_one_warning_and_many_suggest_corners(tmp_path):
    data = coco_set(tmp_path, images=30)
    annotation(data, 10)["bbox"] = [35.0, 2.0, 6.5, 5.0]  # x + w = 41.5 > 40 + 1
    annotation(data, 20)["bbox"] = [34.5, 2.0, 6.4, 5.0]  # 40.9: within the 1-px tolerance
    save(tmp_path, data)
    assert check(tmp_path, evaluated=False).warnings == [
        "1 boxes reach more than 1 px past their image (annotations 10): training clips them to the image "
        "(transform_instance_annotations)"]
    for a in data["annotations"][-6:]:  # 6 more, 7 of 60: [x0, y0, x1, y1] written as [x, y, w, h]
        x, y, w, h = a["bbox"]
        a["bbox"] = [x + 20, y + 12, x + 20 + w, y + 12 + h]
    save(tmp_path, data)
    [warning] = check(tmp_path).warnings
    assert warning.startswith("7 boxes reach more than 1 px past their image (annotations 10, 280, 281, ...)")
    assert "COCO AP compares detections with the unclipped boxes" in warning
    assert warning.endswith("12 % of the boxes: are they [x0, y0, x1, y1]? COCO's bbox is [x, y, width, height]")


def test_area_is_needed_where_the_set_is_evaluated(tmp_path):
    data = coco_set(tmp_path)
    del annotation(data, 11)["area"]
    save(tmp_path, data)
    assert check(tmp_path, evaluated=False).errors == []
    assert check(tmp_path).errors == ["1 annotations lack 'area', which COCO evaluation reads (first: 11); "
                                      "add the box's (or mask's) area in pixels"]


@pytest.mark.parametrize("fault, expected", [
    (lambda d: d["annotations"][3].update(id=10), "1 annotation ids appear more than once (10)"),
    (lambda d: d["images"][2].update(id=1), "1 image ids appear more than once (1)"),
    (lambda d: d["categories"][2].update(id=1), "category ids appear more than once (1)"),
    (lambda d: d["annotations"][4].pop("bbox"), "1 annotations lack 'bbox' (first: annotations[4])"),
    (lambda d: d["images"][1].pop("height"), "1 images lack 'height' (first: images[1])"),
    (lambda d: d["images"][1].update(width=0), "1 images have a width or height that is not a positive whole"),
    (lambda d: d["annotations"][2].update(bbox=[1, 2, "3", 4]),
     "1 annotations have a bbox that is not 4 finite numbers [x, y, width, height] (first: annotation 20: "
     "[1, 2, '3', 4])"),
    (lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), "1 annotations have a bbox that is not 4 finite"),
    (lambda d: d["annotations"][2].update(bbox=[1, 2, float("nan"), 4]), "bbox that is not 4 finite numbers"),
    (lambda d: d["annotations"][2].update(bbox=[5.0, 5.0, 6.0, -1.0]),
     "1 boxes have a negative width or height (annotations 20), which Detectron2 turns into another box"),
    (lambda d: d["annotations"][2].update(ignore=1), "1 annotations set 'ignore', which Detectron2 does not"),
    (lambda d: d["annotations"][2].update(category_id=[1]), "ids must be numbers or strings"),
])
def test_structural_faults_are_errors(tmp_path, fault, expected):
    data = coco_set(tmp_path)
    fault(data)
    save(tmp_path, data)
    errors = check(tmp_path).errors
    assert len(errors) == 1 and expected in errors[0], errors


def test_annotations_of_no_image_are_a_warning(tmp_path):
    data = coco_set(tmp_path)
    annotation(data, 60)["image_id"] = 99
    save(tmp_path, data)
    result = check(tmp_path)
    assert result.errors == [] and result.warnings == [
        "1 annotations name an image_id that is not in 'images' (first: 60); Detectron2 and COCO evaluation "
        "ignore them"]


def test_several_faults_are_reported_together(tmp_path):
    data = coco_set(tmp_path)
    annotation(data, 20)["category_id"] = 9
    save(tmp_path, data)
    os.remove(tmp_path / "images" / "0001.png")
    errors = check(tmp_path).errors
    assert [e.split(" ", 3)[:3] for e in errors] == [["1", "of", "6"], ["1", "annotations", "have"]]


# ------------------------------------------------------------------ what the pinned Detectron2 does

@pytest.mark.detectron2
def test_the_pin_drops_empty_and_outside_boxes_clips_the_rest_and_mirrors_negative_ones(tmp_path):
    """The warnings' claims (and why a negative side is an error), against the pin's
    DatasetMapper in training mode (no resize, no flip)."""
    pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable")
    from detectron2.data import DatasetMapper
    from detectron2.data import transforms as T
    from detectron2.structures import BoxMode

    write_image(tmp_path / "a.png", 40, 30)
    boxes = [[2.0, 3.0, 10.0, 8.0],  # inside: kept as it is
             [5.0, 5.0, 0.0, 8.0], [5.0, 5.0, 6.0, 0.0],  # zero width, zero height: dropped
             [41.0, 2.0, 5.0, 5.0], [2.0, -9.0, 5.0, 9.0],  # right of the image, above it: dropped
             [35.0, 20.0, 10.0, 15.0],  # past the bottom-right corner: clipped
             [5.0, 5.0, 6.0, -1.0]]  # negative height: the box from y = 4 to 5
    record = {"file_name": str(tmp_path / "a.png"), "width": 40, "height": 30, "image_id": 1,
              "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}
                              for b in boxes]}
    mapper = DatasetMapper(True, augmentations=[T.ResizeShortestEdge(30, 40)], image_format="BGR")
    instances = mapper(record)["instances"]
    assert instances.gt_boxes.tensor.tolist() == [[2.0, 3.0, 12.0, 11.0], [35.0, 20.0, 40.0, 30.0],
                                                  [5.0, 4.0, 11.0, 5.0]]


@pytest.mark.detectron2
def test_the_pin_fails_late_on_what_the_checks_refuse(tmp_path):
    """Why these are errors: the pin's loader raises KeyError on an unknown category id, its
    mapper SizeMismatchError on a mis-sized image."""
    pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable")
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper
    from detectron2.data.datasets import load_coco_json
    from detectron2.data.detection_utils import SizeMismatchError

    data = coco_set(tmp_path)
    annotation(data, 20)["category_id"] = 9
    save(tmp_path, data)
    with pytest.raises(KeyError):
        load_coco_json(str(tmp_path / "set.json"), str(tmp_path / "images"), "own_check_unknown_category")
    record = {"file_name": str(tmp_path / "images" / "0001.png"), "width": 30, "height": 40,
              "image_id": 1, "annotations": []}
    with pytest.raises(SizeMismatchError):
        DatasetMapper(get_cfg(), is_train=True)(record)


# ------------------------------------------------------------------ train_net.py and make

def _dataset_args(root, name="mine"):
    return ["--dataset", name, root / "set.json", root / "images"]


def _own(name="mine"):
    return ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)", "MODEL.RETINANET.NUM_CLASSES", "3"]


@pytest.mark.detectron2
def test_train_net_refuses_an_unknown_category_before_writing(tmp_path):
    data = coco_set(tmp_path / "set")
    annotation(data, 20)["category_id"] = 9
    save(tmp_path / "set", data)
    out = tmp_path / "out"
    proc = run_train_net([*_dataset_args(tmp_path / "set"), "--config-file", R18_DEMO, *_own(),
                          "OUTPUT_DIR", out], check=False, cwd=tmp_path)
    line = assert_refused(proc, "dataset 'mine' (", out)
    assert "1 annotations have a category_id that is not in 'categories' (9;" in line


@pytest.mark.detectron2
def test_train_net_eval_refuses_missing_images_all_counted(tmp_path):
    coco_set(tmp_path / "set")
    for i in (1, 4, 5):
        os.remove(tmp_path / "set" / "images" / f"{i:04d}.png")
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"not read: the dataset check comes first")
    out = tmp_path / "eval"
    proc = run_train_net(["--eval-only", *_dataset_args(tmp_path / "set"), "--config-file", R18_DEMO, *_own(),
                          "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out], check=False, cwd=tmp_path)
    assert_refused(proc, "3 of 6 images are missing under", out)


@pytest.mark.detectron2
def test_make_eval_refuses_a_mis_sized_image_before_writing(tmp_path):
    coco_set(tmp_path / "set")
    write_image(tmp_path / "set" / "images" / "0002.png", 64, 64)
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"not read")
    out = tmp_path / "eval"
    datasets = f"mine {tmp_path / 'set' / 'set.json'} {tmp_path / 'set' / 'images'}"
    proc = subprocess.run(
        ["make", "--no-print-directory", "eval", f"PYTHON={sys.executable}", f"EVAL_CONFIG={R18_DEMO}",
         f"EVAL_WEIGHTS={weights}", f"EVAL_OUTPUT={out}", f"DATASETS={datasets}",
         "OPTS=DATASETS.TEST \"('mine',)\" MODEL.RETINANET.NUM_CLASSES 3"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert_refused(proc, "0002.png is 64x64, the JSON says 40x30", out)
