"""Results that say what they are: eval_results.json names the weights (path,
size, short SHA-256), the datasets with their sizes, the config and the commits; an evaluation
into a folder that holds one keeps the earlier one in previous-N (EVAL_REPLACE=1 /
--replace-eval replaces it)."""
import hashlib
import json
import subprocess
import sys

import pytest
import yaml

from d2_support import CHECKOUT, REPO, import_overlay, load_cfg
from d2_support import annotation, coco_set, save

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable (run `make detectron2`)")

import_overlay()

from detectron2.engine.mgd_results import keep_earlier_evaluation  # noqa: E402

R18_DEMO = REPO / "configs" / "demo_retinanet_R_18.yaml"


def _git_head(folder):
    return subprocess.run(["git", "-C", str(folder), "log", "-1", "--format=%H"], stdout=subprocess.PIPE,
                          text=True, check=True).stdout.strip()


def _evaluation(folder, weights="w.pth", dataset="a"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval_results.json").write_text(json.dumps(
        {"bbox": {"AP": 1.0}, "provenance": {"weights": {"path": weights}, "datasets": [{"name": dataset}]}}))
    (folder / "inference").mkdir()
    (folder / "inference" / "coco_instances_results.json").write_text("[]")
    (folder / "config.yaml").write_text(f"# {dataset}\n")
    (folder / "log.txt").write_text("log\n")


def test_an_earlier_evaluation_moves_to_the_next_previous_folder(tmp_path):
    assert keep_earlier_evaluation(str(tmp_path)) is None  # nothing there: nothing to say
    _evaluation(tmp_path, "first.pth", "val_a")
    line = keep_earlier_evaluation(str(tmp_path))
    assert line.startswith("kept what an earlier run wrote here of first.pth on val_a: eval_results.json, "
                           f"inference, config.yaml moved to {tmp_path / 'previous-1'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "previous-1"]  # the log is appended to
    assert (tmp_path / "previous-1" / "config.yaml").read_text() == "# val_a\n"
    assert (tmp_path / "previous-1" / "inference" / "coco_instances_results.json").exists()
    _evaluation(tmp_path, "second.pth", "val_b")
    assert "moved to " + str(tmp_path / "previous-2") in keep_earlier_evaluation(str(tmp_path))
    assert (tmp_path / "previous-2" / "config.yaml").read_text() == "# val_b\n"
    _evaluation(tmp_path, "third.pth", "val_c")
    line = keep_earlier_evaluation(str(tmp_path), replace=True)
    assert line == (f"replaced the earlier evaluation of third.pth on val_c in {tmp_path} "
                    "(eval_results.json, inference, config.yaml deleted)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "previous-1", "previous-2"]


@pytest.fixture(scope="module")
def own_sets(tmp_path_factory):
    """Two small val sets (the second one with a zero-area box) and random R18 RetinaNet weights."""
    import torch
    from detectron2.modeling import build_model

    root = tmp_path_factory.mktemp("own_eval")
    coco_set(root / "a", images=3, size=(64, 48))
    data = coco_set(root / "b", images=4, size=(64, 48))
    annotation(data, 20)["bbox"] = [3.0, 3.0, 0.0, 5.0]
    save(root / "b", data)
    torch.manual_seed(0)
    model = build_model(load_cfg(root, "demo_retinanet_R_18.yaml", ["MODEL.RETINANET.NUM_CLASSES", "3"]))
    torch.save({"model": model.state_dict()}, root / "model.pth")
    return root


def _make_eval(root, out, val, *extra):
    datasets = " ".join(f"{n} {root / n / 'set.json'} {root / n / 'images'}" for n in ("a", "b"))
    opts = "INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 64"
    return subprocess.run(
        ["make", "--no-print-directory", "eval", f"PYTHON={sys.executable}", f"EVAL_CONFIG={R18_DEMO}",
         f"EVAL_WEIGHTS={root / 'model.pth'}", f"EVAL_OUTPUT={out}", f"DATASETS={datasets}",
         f"OPTS=DATASETS.TEST \"('{val}',)\" MODEL.RETINANET.NUM_CLASSES 3 {opts}", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


@pytest.mark.slow
def test_two_evaluations_into_one_folder_keep_both_and_say_what_they_are(own_sets, tmp_path):
    out = tmp_path / "eval"
    first = _make_eval(own_sets, out, "a")
    assert first.returncode == 0, first.stdout[-3000:]
    assert "dataset 'a': 3 images, 6 annotations, 3 categories checked" in first.stdout
    results = json.loads((out / "eval_results.json").read_text())
    about = results["provenance"]
    weights = own_sets / "model.pth"
    assert about["weights"] == {"path": str(weights), "bytes": weights.stat().st_size,
                                "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}
    assert about["network"] == "retinanet" and about["config_file"] == str(R18_DEMO)
    assert about["datasets"] == [{"name": "a", "json_file": str(own_sets / "a" / "set.json"),
                                  "image_root": str(own_sets / "a" / "images"), "images": 3, "annotations": 6}]
    assert about["code"]["commit"] == _git_head(REPO)
    assert about["detectron2"]["commit"] == _git_head(CHECKOUT)
    assert "DATASETS.TEST" in about["overrides"] and "bbox" in results

    # the second, on another set: the first is kept, and the zero-area box is one warning line
    second = _make_eval(own_sets, out, "b")
    assert second.returncode == 0, second.stdout[-3000:]
    warnings = [line for line in second.stdout.splitlines() if line.startswith("warning: ")]
    assert warnings == ["warning: dataset 'b': boxes 1 of zero width or height (annotations 20): COCO AP counts "
                        "each as an object no detection can match"]
    assert f"kept what an earlier run wrote here of {weights} on a: eval_results.json, inference, config.yaml " \
           f"moved to {out / 'previous-1'}" in second.stdout
    kept = json.loads((out / "previous-1" / "eval_results.json").read_text())
    assert kept == results
    assert yaml.safe_load((out / "previous-1" / "config.yaml").read_text())["DATASETS"]["TEST"] == ["a"]
    assert yaml.safe_load((out / "config.yaml").read_text())["DATASETS"]["TEST"] == ["b"]
    assert (out / "previous-1" / "inference").is_dir() and (out / "inference").is_dir()
    assert json.loads((out / "eval_results.json").read_text())["provenance"]["datasets"][0]["images"] == 4

    # EVAL_REPLACE=1: the newest replaces the one there; previous-1 stays
    third = _make_eval(own_sets, out, "a", "EVAL_REPLACE=1")
    assert third.returncode == 0, third.stdout[-3000:]
    assert f"replaced the earlier evaluation of {weights} on b in {out}" in third.stdout
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["inference", "previous-1"]
