"""Your own COCO-format data: ``train_net.py --dataset NAME JSON IMAGE_ROOT``
and ``make ... DATASETS="NAME JSON IMAGE_ROOT ..."`` register a set under NAME (the demo's
synthetic set goes through the same code), and its class count is checked against the config."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

from d2_support import CHECKOUT, REPO, import_overlay, load_cfg, make_synthetic_dataset, run_train_net  # noqa: E402
from scripts_support import assert_refused  # noqa: E402

import_overlay()

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.mgd_datasets import (  # noqa: E402
    DatasetError,
    check_datasets,
    register_coco_dataset,
)
from detectron2.structures import BoxMode  # noqa: E402


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_own", train=4, val=3)


def _coco(root, split):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_register_reads_the_coco_file_as_written(synth):
    json_file, images = synth / "annotations" / "instances_val.json", synth / "val"
    assert register_coco_dataset("own_test_val", json_file, images) == 4
    assert register_coco_dataset("own_test_val", json_file, images) == 4  # idempotent
    coco = _coco(synth, "val")
    dicts = DatasetCatalog.get("own_test_val")
    assert len(dicts) == len(coco["images"]) == 3
    for record in dicts:
        expected = [a["bbox"] for a in coco["annotations"] if a["image_id"] == record["image_id"]]
        assert [o["bbox"] for o in record["annotations"]] == expected
        assert all(o["bbox_mode"] == BoxMode.XYWH_ABS for o in record["annotations"])
    meta = MetadataCatalog.get("own_test_val")
    by_id = sorted(coco["categories"], key=lambda c: c["id"])
    assert meta.thing_classes == [c["name"] for c in by_id]
    assert meta.evaluator_type == "coco"


def test_register_refuses_what_it_cannot_use(synth, tmp_path):
    json_file, images = synth / "annotations" / "instances_train.json", synth / "train"
    with pytest.raises(DatasetError, match="annotation file .* not found"):
        register_coco_dataset("own_test_missing", tmp_path / "none.json", images)
    with pytest.raises(DatasetError, match="image folder .* not found"):
        register_coco_dataset("own_test_missing", json_file, tmp_path / "none")
    register_coco_dataset("own_test_taken", json_file, images)
    with pytest.raises(DatasetError, match="already taken"):
        register_coco_dataset("own_test_taken", synth / "annotations" / "instances_val.json", synth / "val")
    with pytest.raises(DatasetError, match="already taken"):  # Detectron2's own sets keep their names
        register_coco_dataset("coco_2017_val", json_file, images)
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        register_coco_dataset("own_test_not_coco", not_coco, images)
    assert "own_test_not_coco" not in DatasetCatalog.list()


def test_check_datasets_compares_categories_with_num_classes(synth, tmp_path):
    register_coco_dataset("own_test_train", synth / "annotations" / "instances_train.json", synth / "train")
    cfg = load_cfg(tmp_path, "demo_retinanet_R_18.yaml",
                   ["DATASETS.TRAIN", "('own_test_train',)", "DATASETS.TEST", "()"])
    check_datasets(cfg)  # 4 categories, NUM_CLASSES 4
    cfg.MODEL.RETINANET.NUM_CLASSES = 3
    with pytest.raises(DatasetError, match="has 4 categories but MODEL.RETINANET.NUM_CLASSES is 3"):
        check_datasets(cfg)
    cfg.MODEL.RETINANET.NUM_CLASSES = 4
    cfg.DATASETS.TEST = ("own_test_unregistered",)
    check_datasets(cfg, test=False)  # the probe reads the training sets only
    with pytest.raises(DatasetError, match="'own_test_unregistered' .* is not registered"):
        check_datasets(cfg, train=False)  # an evaluation reads the test sets only
    cfg.DATASETS.TEST = ()
    cfg.MODEL.RETINANET.NUM_CLASSES = 80  # COCO's, but the set is not there
    cfg.DATASETS.TRAIN = ("coco_2017_train",)
    if not (REPO / "datasets" / "coco").exists():
        with pytest.raises(DatasetError, match="coco_2017_train.*not found"):
            check_datasets(cfg)


def test_train_net_refuses_a_bad_dataset_argument(tmp_path, synth):
    out = tmp_path / "out"
    proc = run_train_net(["--dataset", "mine", tmp_path / "none.json", synth / "train",
                          "--config-file", REPO / "configs" / "demo_retinanet_R_18.yaml", "OUTPUT_DIR", out],
                         check=False, cwd=tmp_path)
    assert_refused(proc, f"dataset 'mine': annotation file {tmp_path / 'none.json'} not found", out)


@pytest.mark.slow
def test_make_base_trains_on_a_set_named_by_the_user(tmp_path, synth):
    """The README's sequence: DATASETS names the set, OPTS points DATASETS.TRAIN at it, the
    config is used from configs/ as it is."""
    weights = tmp_path / "weights"
    weights.mkdir()
    pth = weights / "resnet18.pth"
    subprocess.run([sys.executable, REPO / "scripts" / "make_random_torchvision_weights.py", "--depth", "18", pth],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, CHECKOUT / "tools" / "convert-torchvision-to-d2.py", pth,
                    weights / "r-18.pkl"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    datasets = (f"shapes_train {synth}/annotations/instances_train.json {synth}/train "
                f"shapes_val {synth}/annotations/instances_val.json {synth}/val")
    # OPTS reaches the shell unquoted: quote what has parentheses (as in the README)
    opts = ("DATASETS.TRAIN \"('shapes_train',)\" DATASETS.TEST \"('shapes_val',)\" SOLVER.MAX_ITER 1 "
            "SOLVER.IMS_PER_BATCH 2 INPUT.MIN_SIZE_TRAIN \"(64,)\" INPUT.MAX_SIZE_TRAIN 64 "
            "INPUT.MIN_SIZE_TEST 64 INPUT.MAX_SIZE_TEST 64")
    proc = subprocess.run(
        ["make", "--no-print-directory", "base", "DEPTH=18", f"PYTHON={sys.executable}",
         "BASE_CONFIG=configs/demo_retinanet_R_18.yaml", f"WEIGHTS_DIR={weights}",
         f"OUTPUT_DIR={tmp_path}", f"DATASETS={datasets}", f"OPTS={opts}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "--dataset shapes_train" in proc.stdout  # the printed command passes them through
    assert (tmp_path / "base-R18" / "model_final.pth").exists()
    # both sets were read from the files DATASETS named (train, then the final evaluation)
    for split, count in (("train", 4), ("val", 3)):
        assert f"Loaded {count} images in COCO format from {synth}/annotations/instances_{split}.json" in proc.stdout
