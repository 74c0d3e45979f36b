"""Shared helpers of the Detectron2-side MGD tests (no tests here).

Configs are copied with Detectron2's Base-RetinaNet.yaml into a temporary
``configs/COCO-Detection/`` so their ``_BASE_: "../Base-RetinaNet.yaml"`` resolves exactly
as in the checkout, without depending on `make overlay` having copied the latest yaml.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
from mgd.bootstrap import CHECKOUT_ENV, detectron2_checkout, detectron2_import_paths

#: the Detectron2 checkout under test (tests/conftest.py: DETECTRON2=pin|latest, or DETECTRON2_DIR)
CHECKOUT = Path(detectron2_checkout(str(REPO)))
SYNTH_SIZE = 64

# small images and schedules for tests (c5 left out where not needed: solving its 512 x 2048
# tiled assignment takes seconds on CPU)
TINY_INPUT = [
    "INPUT.MIN_SIZE_TRAIN", f"({SYNTH_SIZE},)", "INPUT.MAX_SIZE_TRAIN", str(SYNTH_SIZE),
    "INPUT.MIN_SIZE_TEST", str(SYNTH_SIZE), "INPUT.MAX_SIZE_TEST", str(SYNTH_SIZE),
]


def config_dir(tmp_root: Path) -> Path:
    """tmp_root/configs/COCO-Detection holding this repo's configs, with Base-RetinaNet.yaml and
    Base-RCNN-FPN.yaml above."""
    target = Path(tmp_root) / "configs" / "COCO-Detection"
    if not target.exists():
        target.mkdir(parents=True)
        for base in ("Base-RetinaNet.yaml", "Base-RCNN-FPN.yaml"):
            shutil.copy(CHECKOUT / "configs" / base, target.parent)
        for yaml in (REPO / "configs").glob("*.yaml"):
            shutil.copy(yaml, target)
    return target


def load_cfg(tmp_root, name, opts=()):
    from detectron2.config import get_cfg

    from mgd.config import add_mgd_config

    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(str(config_dir(tmp_root) / name))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def import_overlay():
    """Import the overlay modules from their copies in the checkout (registers them once)."""
    import detectron2.engine.mgd_hooks  # noqa: F401
    import detectron2.engine.mgd_trainer  # noqa: F401
    import detectron2.modeling.backbone.mgd_resnet  # noqa: F401
    import detectron2.modeling.meta_arch.mgd_retinanet  # noqa: F401


def synthetic_batch(n=2, size=SYNTH_SIZE, seed=0, num_classes=4):
    """Detectron2 training inputs: random images with 1-3 random boxes each (mgd_tools.training_batch)."""
    from mgd_tools.training_batch import synthetic_batch as make

    return make(n, size=size, seed=seed, num_classes=num_classes)


def make_synthetic_dataset(root: Path, train=16, val=8, size=SYNTH_SIZE) -> Path:
    """The project's synthetic COCO set, small (mgd_tools/synthetic_coco.py)."""
    root = Path(root)
    if not (root / "annotations" / "instances_val.json").exists():
        from mgd_tools.synthetic_coco import SynthConfig, write_dataset

        write_dataset(root, SynthConfig(num_train=train, num_val=val, size=size,
                                        min_object=8.0, max_object=size / 2))
    return root


def make_mixed_orientation_dataset(root: Path, train=24, val=4, size=SYNTH_SIZE) -> Path:
    """The synthetic set (varied images: shapes, colours, clutter) with a third of its images
    cropped to landscape (size x 3/4 size) and a third to portrait, boxes clipped to the crop
    (those left with less than half their area dropped; each image keeps at least one), so
    that batches grouped by orientation differ from plain ones. Same layout and names as
    :func:`make_synthetic_dataset`."""
    from PIL import Image

    root = Path(root)
    if (root / "annotations" / "instances_val.json").exists():
        return root
    make_synthetic_dataset(root, train=train, val=val, size=size)
    short = size * 3 // 4
    for split in SYNTH_SPLITS:
        path = root / "annotations" / f"instances_{split}.json"
        coco = json.loads(path.read_text())
        kept = []
        for k, image in enumerate(coco["images"]):
            width, height = [(size, size), (size, short), (short, size)][k % 3]
            anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            clipped = [_clip_box(a, width, height) for a in anns]
            if (width, height) != (size, size) and any(clipped):
                file = root / split / image["file_name"]
                Image.open(file).crop((0, 0, width, height)).save(file)
                image["width"], image["height"] = width, height
                anns = [a for a in clipped if a]
            kept += anns
        coco["annotations"] = kept
        path.write_text(json.dumps(coco))
    return root


def _clip_box(annotation: dict, width: int, height: int):
    """The annotation with its box clipped to width x height, or None if under half of it remains."""
    x, y, w, h = annotation["bbox"]
    x1, y1 = min(x + w, width), min(y + h, height)
    if x >= x1 or y >= y1 or (x1 - x) * (y1 - y) < 0.5 * w * h:
        return None
    return dict(annotation, bbox=[x, y, x1 - x, y1 - y], area=(x1 - x) * (y1 - y))


SYNTH_SPLITS = ("train", "val")


def synthetic_dataset_args(root) -> list:
    """train_net.py's ``--dataset NAME JSON IMAGE_ROOT`` arguments of a synthetic set at ``root``,
    under the names the demo configs use (mgd_synth_train, mgd_synth_val)."""
    root = Path(root)
    args = []
    for split in SYNTH_SPLITS:
        args += ["--dataset", f"mgd_synth_{split}", str(root / "annotations" / f"instances_{split}.json"),
                 str(root / split)]
    return args


def register_synthetic_dataset(root) -> None:
    """Register a synthetic set in this process, as train_net.py --dataset does."""
    from detectron2.data.mgd_datasets import register_coco_dataset

    args = synthetic_dataset_args(root)
    for i in range(0, len(args), 4):
        register_coco_dataset(*args[i + 1:i + 4])


def detectron2_env(checkout: Path = CHECKOUT) -> dict:
    """The environment of a subprocess that imports Detectron2 from ``checkout`` (and this
    repository), as the Makefile sets it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*detectron2_import_paths(str(checkout)), str(REPO)])
    env[CHECKOUT_ENV] = str(checkout)
    return env


def run_train_net(args, synth_root=None, timeout=600, check=True, cwd=REPO):
    """Run train_net.py in a subprocess, with the synthetic set at ``synth_root`` (if given)
    registered; returns CompletedProcess (stdout+stderr in .stdout)."""
    env = detectron2_env()
    env.setdefault("OMP_NUM_THREADS", "2")
    datasets = synthetic_dataset_args(synth_root) if synth_root is not None else []
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_net.py"), *datasets, *map(str, args)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net.py {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             + proc.stdout[-6000:])
    return proc


# ---- small COCO-format sets for the dataset checks (PNG images and their instances JSON)

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}, {"id": 3, "name": "bar"}]


def write_image(path: Path, width: int, height: int, fmt: str = "PNG", exif_orientation: int = 0) -> None:
    from PIL import Image

    image = Image.new("RGB", (width, height), (90, 120, 30))
    if exif_orientation:
        exif = Image.Exif()
        exif[274] = exif_orientation
        image.save(path, fmt, exif=exif.tobytes())
    else:
        image.save(path, fmt)


def coco_set(root: Path, images=6, size=(40, 30)) -> dict:
    """``images`` PNGs of ``size`` under root/images and their instances JSON (two boxes
    per image, inside it, categories 1..3); returns the JSON's dict (written as root/set.json)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    data = {"images": [], "annotations": [], "categories": [dict(c) for c in CATEGORIES]}
    for i in range(1, images + 1):
        name = f"{i:04d}.png"
        write_image(root / "images" / name, *size)
        data["images"].append({"id": i, "file_name": name, "width": size[0], "height": size[1]})
        for j in range(2):
            data["annotations"].append({"id": 10 * i + j, "image_id": i, "category_id": 1 + (i + j) % 3,
                                        "bbox": [2.0 + 5 * j, 3.0, 10.0, 8.0], "area": 80.0, "iscrowd": 0})
    save(root, data)
    return data


def save(root: Path, data: dict) -> Path:
    (root / "set.json").write_text(json.dumps(data))
    return root / "set.json"


def annotation(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)
