"""Input sizes that fit the data: ``train_net.py --scale coco|data|PIXELS`` (make: ``SCALE=``).

The configs carry COCO's sizes: training images resized to a shorter side of 640-800 px
(longer side at most 1333), evaluation at 800. A set of 128-px images is then upscaled ~6x,
and every step costs what a COCO step costs. ``--scale`` sets the four ``INPUT`` sizes, the
same way for training, the loss-factor probe and evaluation:

* ``coco`` (default): the config's sizes, unchanged;
* ``data``: the training set's own scale, read from its COCO JSON (``images[].width/height``):
  shorter side = the median of the images' shorter sides (a typical image is not resized),
  longer side at most = the longest image's longer side at that scale (none is capped);
* ``PIXELS`` (a number, e.g. ``320``): shorter side PIXELS, longer side at most
  PIXELS x 1333 / 800 (COCO's ratio).

Training uses one size (no multi-scale). Keys given explicitly among the overrides win. The
anchors (``MODEL.ANCHOR_GENERATOR.SIZES``) are left as they are; for ``data`` a log line
states the objects' sizes at the chosen scale next to the smallest anchor. The run's
``config.yaml`` names the ``--scale`` in its first line (:func:`record_scale`).
"""
import json
import os
import statistics
from typing import List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from mgd.errors import UserError

__all__ = ["ScaleError", "apply_scale", "parse_scale", "record_scale", "COCO_MAX_RATIO", "SIZE_KEYS"]

COCO_MAX_RATIO = 1333 / 800
SIZE_KEYS = ("INPUT.MIN_SIZE_TRAIN", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST", "INPUT.MAX_SIZE_TEST")


class ScaleError(UserError, ValueError):
    """A --scale that cannot be applied; the message is one line (see mgd.errors)."""


def parse_scale(text: str) -> str:
    """``coco``, ``data`` or a whole number of pixels >= 32 (argparse type)."""
    text = str(text).strip().lower()
    if text in ("coco", "data") or (text.isdigit() and int(text) >= 32):
        return text
    raise ScaleError(f"--scale (make: SCALE) must be coco, data or a shorter side in pixels >= 32, got {text!r}")


def _image_and_box_sizes(json_file: str) -> Tuple[List[Tuple[int, int]], List[Tuple[float, int]]]:
    """(width, height) of every image, and (sqrt(area), its image's shorter side) of every
    box of a COCO instances file."""
    try:
        with open(json_file) as f:
            data = json.load(f)
        images = {i["id"]: (int(i["width"]), int(i["height"])) for i in data["images"]}
        boxes = [((a["bbox"][2] * a["bbox"][3]) ** 0.5, min(images[a["image_id"]]))
                 for a in data.get("annotations", ())
                 if not a.get("iscrowd", 0) and a.get("image_id") in images and min(a["bbox"][2:4]) > 0]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise ScaleError(f"--scale data: cannot read the image sizes of {json_file} "
                         f"({type(error).__name__}: {' '.join(str(error).split())})") from None
    return list(images.values()), boxes


def _dataset_files(names: Sequence[str]) -> List[str]:
    files = []
    for name in names:
        json_file = getattr(MetadataCatalog.get(name), "json_file", None) if name in DatasetCatalog.list() else None
        if not json_file or not os.path.isfile(json_file):
            return []
        files.append(json_file)
    return files


def _data_sizes(cfg) -> Tuple[int, int, str]:
    """(shorter side, longer-side cap, one-line description) from the training sets' JSON,
    or the test sets' when the training sets are not registered (an evaluation)."""
    for names, what in ((cfg.DATASETS.TRAIN, "training"), (cfg.DATASETS.TEST, "test")):
        files = _dataset_files(names) if names else []
        if files:
            break
    else:
        raise ScaleError("--scale data reads the image sizes from the COCO JSON of DATASETS.TRAIN (or "
                         "DATASETS.TEST), but none is registered with a readable file; register them "
                         "(train_net.py --dataset, make DATASETS=) or give a size: --scale 512 (SCALE=512)")
    images, boxes = [], []
    for json_file in files:
        more_images, more_boxes = _image_and_box_sizes(json_file)
        images += more_images
        boxes += more_boxes
    images = [(w, h) for w, h in images if w > 0 and h > 0]
    if not images:
        raise ScaleError(f"--scale data: {', '.join(files)} list no image with a width and height")
    short = int(round(statistics.median(min(w, h) for w, h in images)))
    long_cap = max(int(round(max(w, h) * short / min(w, h))) for w, h in images)
    text = f"the median shorter side of the {len(images)} {what} images ({', '.join(names)})"
    sides = sorted(side * short / image_short for side, image_short in boxes if image_short > 0)
    if sides:
        smallest_anchor = min(min(level) for level in cfg.MODEL.ANCHOR_GENERATOR.SIZES)
        text += (f"; objects at this scale: median side {sides[len(sides) // 2]:.0f} px, 10% under "
                 f"{sides[len(sides) // 10]:.0f} px; the smallest anchor is {smallest_anchor:g} px "
                 "(MODEL.ANCHOR_GENERATOR.SIZES)")
    return short, long_cap, text


def apply_scale(cfg, scale: str, explicit: Sequence[str] = ()) -> Optional[str]:
    """Set ``cfg``'s INPUT sizes for ``scale`` (see the module docstring), except the keys in
    ``explicit`` (the command line's overrides). Returns the line to log (None for coco)."""
    scale = parse_scale(scale)
    if scale == "coco":
        return None
    if scale == "data":
        short, long_cap, why = _data_sizes(cfg)
    else:
        short = int(scale)
        long_cap, why = int(round(short * COCO_MAX_RATIO)), f"SCALE {short} (longer side at most x1333/800)"
    values = {"INPUT.MIN_SIZE_TRAIN": (short,), "INPUT.MAX_SIZE_TRAIN": long_cap,
              "INPUT.MIN_SIZE_TEST": short, "INPUT.MAX_SIZE_TEST": long_cap}
    kept = [key for key in SIZE_KEYS if key in set(explicit)]
    for key, value in values.items():
        if key not in kept:
            section, name = key.split(".")
            cfg[section][name] = value
    line = (f"Sizes (--scale {scale}): images resized to a shorter side of {short} px, longer side at "
            f"most {long_cap} px, for training and evaluation; from {why}")
    if kept:
        line += f"; kept as given: {', '.join(kept)}"
    return line


def record_scale(output_dir: str, scale: str) -> None:
    """State ``scale`` (the ``--scale`` given) in the first line of ``output_dir/config.yaml``,
    whose INPUT sizes it chose; the file is rewritten atomically, and left alone if missing."""
    path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        text = f.read()
    with open(path + ".part", "w") as f:
        f.write(f"# train_net.py --scale {scale} (make SCALE={scale}): INPUT sizes below\n" + text)
    os.replace(path + ".part", path)
