"""Sizes that fit the data: ``--scale coco|data|PIXELS`` (make ``SCALE=``)
sets the INPUT sizes for training, probe and evaluation alike; ``DATALOADER.NUM_WORKERS`` is
never above the cores; the screen gets one line for each long listing, the log file all of it.

Expected sizes are worked out by hand from the JSON written here, not by the code."""
import json
import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable (run `make detectron2`)")

from d2_support import REPO, import_overlay, load_cfg, make_synthetic_dataset, run_train_net  # noqa: E402
from scripts_support import assert_refused  # noqa: E402

import_overlay()

from detectron2.data.mgd_datasets import register_coco_dataset  # noqa: E402
from detectron2.engine.mgd_scale import ScaleError, apply_scale, parse_scale  # noqa: E402
from detectron2.engine.mgd_setup import clamp_workers  # noqa: E402

R18_COCO = "retinanet_torchvision_R_18_FPN_1x.yaml"
R18_DEMO = REPO / "configs" / "demo_retinanet_R_18.yaml"

# (width, height) of five images; shorter sides 480, 300, 200, 128, 480 -> median 300
IMAGES = [(640, 480), (300, 500), (1000, 200), (128, 128), (480, 640)]
# longer sides at a shorter side of 300: 400, 500, 1500, 300, 400 -> cap 1500
# boxes (image index, w, h): sqrt(area) 48, 40, 32 at their image's scale, i.e. at a shorter
# side of 300: 48*300/480 = 30, 40*300/200 = 60, 32*300/128 = 75 -> median 60; 10% under 30
BOXES = [(0, 48, 48), (2, 20, 80), (3, 64, 16)]


def _write_set(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    coco = {
        "images": [{"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h} for i, (w, h) in enumerate(IMAGES)],
        "annotations": [{"id": k + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, w, h], "area": w * h,
                         "iscrowd": 0} for k, (i, w, h) in enumerate(BOXES)],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = root / f"{name}.json"
    path.write_text(json.dumps(coco))
    register_coco_dataset(name, path, root / "images")
    return path


@pytest.fixture(scope="module")
def sizes_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    _write_set(root, "sizes_train")
    return root


def _cfg(tmp_path, train=("sizes_train",), test=()):
    return load_cfg(tmp_path, R18_COCO, ["DATASETS.TRAIN", str(tuple(train)), "DATASETS.TEST", str(tuple(test)),
                                          "MODEL.RETINANET.NUM_CLASSES", "1"])


def test_scale_data_is_the_median_shorter_side_and_caps_no_image(tmp_path, sizes_set):
    cfg = _cfg(tmp_path)
    line = apply_scale(cfg, "data")
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (300,) and cfg.INPUT.MIN_SIZE_TEST == 300
    assert cfg.INPUT.MAX_SIZE_TRAIN == cfg.INPUT.MAX_SIZE_TEST == 1500
    assert "shorter side of 300 px, longer side at most 1500 px" in line
    assert "median side 60 px, 10% under 30 px; the smallest anchor is 32 px" in line, line


def test_scale_in_pixels_keeps_the_keys_given_on_the_command_line(tmp_path, sizes_set):
    cfg = _cfg(tmp_path)
    line = apply_scale(cfg, "256", explicit=["INPUT.MAX_SIZE_TEST", "SOLVER.MAX_ITER"])
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (256,) and cfg.INPUT.MIN_SIZE_TEST == 256
    assert cfg.INPUT.MAX_SIZE_TRAIN == 427  # 256 * 1333 / 800 = 426.56
    assert cfg.INPUT.MAX_SIZE_TEST == 1333  # the config's, given explicitly
    assert "kept as given: INPUT.MAX_SIZE_TEST" in line


def test_scale_coco_changes_nothing(tmp_path, sizes_set):
    cfg = _cfg(tmp_path)
    before = cfg.dump()
    assert apply_scale(cfg, "coco") is None
    assert cfg.dump() == before
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (640, 672, 704, 736, 768, 800)  # COCO's, from Base-RetinaNet


def test_scale_data_of_an_evaluation_reads_the_test_sets_when_no_training_set_is_registered(tmp_path, sizes_set):
    cfg = _cfg(tmp_path, train=("sizes_not_registered",), test=("sizes_train",))
    apply_scale(cfg, "data")
    assert cfg.INPUT.MIN_SIZE_TEST == 300
    cfg = _cfg(tmp_path, train=("sizes_not_registered",), test=())
    with pytest.raises(ScaleError, match="none is registered"):
        apply_scale(cfg, "data")


@pytest.mark.parametrize("bad", ["small", "16", "-1", "1.5", ""])
def test_parse_scale_refuses(bad):
    with pytest.raises(ScaleError, match="must be coco, data or a shorter side in pixels"):
        parse_scale(bad)


def test_workers_are_clamped_to_the_cores_per_process(tmp_path):
    cores = len(os.sched_getaffinity(0))
    cfg = load_cfg(tmp_path, R18_COCO)
    cfg.DATALOADER.NUM_WORKERS = cores + 3
    line = clamp_workers(cfg, 1)
    assert cfg.DATALOADER.NUM_WORKERS == cores and f"lowered to {cores}" in line
    cfg.DATALOADER.NUM_WORKERS = 1
    assert clamp_workers(cfg, 1) is None and cfg.DATALOADER.NUM_WORKERS == 1
    cfg.DATALOADER.NUM_WORKERS = 1
    clamp_workers(cfg, cores + 1)  # more processes than cores: each loads its own data
    assert cfg.DATALOADER.NUM_WORKERS == 0


def test_train_net_refuses_a_bad_scale_in_one_line(tmp_path):
    out = tmp_path / "out"
    proc = run_train_net(["--scale", "big", "--config-file", R18_DEMO, "OUTPUT_DIR", out], check=False, cwd=tmp_path)
    assert_refused(proc, "--scale (make: SCALE) must be coco, data or a shorter side in pixels >= 32, got 'big'", out)


@pytest.fixture(scope="module")
def converted_r18(tmp_path_factory):
    """A torchvision-layout R18 converted by the pin's converter: loading it lists every tensor."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("r18")
    subprocess.run([sys.executable, REPO / "scripts" / "make_random_torchvision_weights.py", "--depth", "18",
                    root / "r18.pth"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, REPO / "detectron2" / "tools" / "convert-torchvision-to-d2.py", root / "r18.pth",
                    root / "r-18.pkl"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return root / "r-18.pkl"


def test_a_run_at_the_data_scale_says_so_records_it_and_keeps_the_screen_short(tmp_path, converted_r18):
    """One training iteration with --scale data on a 64-px set: the sizes in config.yaml (with
    the scale on its first line), NUM_WORKERS clamped, the per-tensor listing and the full
    config in log.txt only, one summary line for each on the screen."""
    synth = make_synthetic_dataset(tmp_path / "synth", train=4, val=2, size=64)
    out = tmp_path / "out"
    cores = len(os.sched_getaffinity(0))
    proc = run_train_net(["--scale", "data", "--config-file", R18_DEMO, "MODEL.WEIGHTS", converted_r18,
                          "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()",
                          "DATALOADER.NUM_WORKERS", str(cores + 5), "OUTPUT_DIR", out], synth, cwd=tmp_path)
    screen, log = proc.stdout, (out / "log.txt").read_text()
    config = (out / "config.yaml").read_text()
    assert config.splitlines()[0].startswith("# train_net.py --scale data")
    import yaml

    saved = yaml.safe_load(config)
    assert saved["INPUT"]["MIN_SIZE_TRAIN"] == [64] and saved["INPUT"]["MIN_SIZE_TEST"] == 64
    assert saved["INPUT"]["MAX_SIZE_TRAIN"] == 64 and saved["DATALOADER"]["NUM_WORKERS"] == cores
    assert "Sizes (--scale data): images resized to a shorter side of 64 px" in screen
    assert f"DATALOADER.NUM_WORKERS {cores + 5} lowered to {cores}" in screen
    # the listings: every line in log.txt, a summary on the screen
    listed = log.count(" loaded from ")
    assert " loaded from " not in screen
    if "Following weights matched with submodule" in log:
        # today's Detectron2 logs no per-tensor listing, one line with the count of matched groups
        assert listed == 0 and screen.count("Following weights matched with submodule") == 1, screen
    else:  # the pin: one line per tensor
        assert listed >= 60, log[-2000:]  # R18's backbone: 62 tensors (weights and norm statistics)
        assert f"Loaded {listed} tensors of the checkpoint by name [per-tensor listing in {out}/log.txt]" in screen
    # the full config (today's Detectron2 colours it with pygments' escape codes, in the log too)
    assert "CUDNN_BENCHMARK:" in re.sub(r"\x1b\[[0-9;]*m", "", log) and "CUDNN_BENCHMARK:" not in screen
    assert "Running with full config [" in screen
    assert "Starting training from iteration 0" in screen and screen.count("Starting training from iteration 0") == 1
    assert len(screen.splitlines()) < 80, screen
