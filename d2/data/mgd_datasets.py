"""COCO-format datasets named on the command line, and the checks run before a run starts.

``train_net.py --dataset NAME JSON IMAGE_ROOT`` calls :func:`register_coco_dataset`; the
demo's synthetic set is registered the same way. :func:`check_datasets` then verifies that
every set named in ``DATASETS.TRAIN`` / ``DATASETS.TEST`` is registered, that its files
exist, and that its number of categories equals ``MODEL.RETINANET.NUM_CLASSES``. Problems
raise :class:`DatasetError` with a one-line message.
"""
import json
import os
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

__all__ = ["DatasetError", "register_coco_dataset", "check_datasets", "coco_categories"]

_OWN_SET_HINT = "register your own with train_net.py --dataset NAME JSON IMAGE_ROOT (make: DATASETS=\"NAME JSON IMAGE_ROOT\")"


class DatasetError(ValueError):
    """A dataset that cannot be used as named; the message is one line."""


def coco_categories(json_file: str) -> List[str]:
    """Category names of a COCO instances file, ordered by category id (as Detectron2's
    ``load_coco_json`` orders ``thing_classes``)."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read COCO annotations {json_file}: {type(error).__name__}: "
                           f"{' '.join(str(error).split())}") from None
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{json_file} is not a COCO instances file (needs 'images', 'annotations' "
                           "and 'categories')")
    try:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        names = [str(c["name"]) for c in categories]
    except (KeyError, TypeError):
        raise DatasetError(f"{json_file}: every category needs an 'id' and a 'name'") from None
    if not names:
        raise DatasetError(f"{json_file} has no categories")
    return names


def register_coco_dataset(name: str, json_file: str, image_root: str) -> int:
    """Register the COCO instances set ``json_file`` (images under ``image_root``) as ``name``.

    Idempotent for the same files. Its ``thing_classes`` are read now, so the class count can
    be checked before training. Returns the number of categories.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if not os.path.isfile(json_file):
        raise DatasetError(f"dataset {name!r}: annotation file {json_file} not found")
    if not os.path.isdir(image_root):
        raise DatasetError(f"dataset {name!r}: image folder {image_root} not found")
    if name in DatasetCatalog.list():
        registered = getattr(MetadataCatalog.get(name), "json_file", None)
        if registered is None or os.path.abspath(registered) != os.path.abspath(json_file):
            raise DatasetError(f"dataset name {name!r} is already taken (by {registered}); "
                               "choose another NAME for --dataset")
        return len(MetadataCatalog.get(name).thing_classes)
    classes = coco_categories(json_file)
    register_coco_instances(name, {"thing_classes": classes}, json_file, image_root)
    return len(classes)


def check_datasets(cfg, train: bool = True, test: bool = True) -> None:
    """Every set the run reads (``DATASETS.TRAIN`` when ``train``, ``DATASETS.TEST`` when
    ``test``) is registered, its files exist and (where its categories are known) their
    number is ``MODEL.RETINANET.NUM_CLASSES``."""
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES
    names = (list(cfg.DATASETS.TRAIN) if train else []) + (list(cfg.DATASETS.TEST) if test else [])
    for name in names:
        if name not in DatasetCatalog.list():
            raise DatasetError(f"dataset {name!r} (DATASETS) is not registered; {_OWN_SET_HINT}")
        meta = MetadataCatalog.get(name)
        json_file, image_root = getattr(meta, "json_file", None), getattr(meta, "image_root", None)
        if json_file is not None and not os.path.isfile(json_file):
            root = os.environ.get("DETECTRON2_DATASETS", "datasets")
            raise DatasetError(
                f"dataset {name!r}: annotation file {json_file} not found (Detectron2's sets live "
                f"under $DETECTRON2_DATASETS, now {root!r}; see detectron2/datasets/README.md), "
                f"or {_OWN_SET_HINT}")
        if image_root is not None and not os.path.isdir(image_root):
            raise DatasetError(f"dataset {name!r}: image folder {image_root} not found")
        classes = getattr(meta, "thing_classes", None)
        if classes is not None and len(classes) != num_classes:
            raise DatasetError(
                f"dataset {name!r} has {len(classes)} categories but MODEL.RETINANET.NUM_CLASSES is "
                f"{num_classes}; set MODEL.RETINANET.NUM_CLASSES {len(classes)}")
