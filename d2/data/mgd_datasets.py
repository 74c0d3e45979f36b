"""COCO-format datasets named on the command line, and the checks run before a run starts.

``train_net.py --dataset NAME JSON IMAGE_ROOT`` calls :func:`register_coco_dataset`; the
demo's synthetic set is registered the same way. :func:`check_datasets` then verifies that
every set named in ``DATASETS.TRAIN`` / ``DATASETS.TEST`` is registered, that its files
exist, that its number of categories equals the detector's class count
(``MODEL.RETINANET.NUM_CLASSES``, ``MODEL.ROI_HEADS.NUM_CLASSES``), and what its
JSON and images hold (``mgd_coco_checks.check_coco_set``: unknown category ids, missing or
mis-sized images, empty or outside boxes ...). Problems raise :class:`DatasetError` with a
one-line message; what Detectron2 drops or clips anyway is returned as warnings.
"""
import os
from typing import Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.mgd_coco_checks import CocoCheck, check_coco_set, read_coco_json

from mgd.config import class_count_keys
from mgd.errors import UserError

__all__ = ["DatasetError", "register_coco_dataset", "check_datasets", "coco_categories", "dataset_sizes"]

#: a JSON this large (bytes) gets a "reading ..." line first: its parse takes seconds
_ANNOUNCE_BYTES = 20 * 2**20

_OWN_SET_HINT = "register your own with train_net.py --dataset NAME JSON IMAGE_ROOT (make: DATASETS=\"NAME JSON IMAGE_ROOT\")"


class DatasetError(UserError, ValueError):
    """A dataset that cannot be used as named; the message is one line (see mgd.errors)."""


def _read(json_file: str) -> dict:
    try:
        return read_coco_json(json_file)
    except ValueError as error:
        raise DatasetError(str(error)) from None


def coco_categories(json_file: str, data: Optional[dict] = None) -> List[str]:
    """Category names of a COCO instances file (``data``: its parsed contents, if read),
    ordered by category id (as Detectron2's ``load_coco_json`` orders ``thing_classes``)."""
    data = _read(json_file) if data is None else data
    try:
        categories = sorted(data["categories"], key=lambda c: c["id"])
        names = [str(c["name"]) for c in categories]
    except (KeyError, TypeError):
        raise DatasetError(f"{json_file}: every category needs an 'id' and a 'name'") from None
    if not names:
        raise DatasetError(f"{json_file} has no categories")
    return names


def register_coco_dataset(name: str, json_file: str, image_root: str,
                          parsed: Optional[Dict[str, dict]] = None,
                          progress: Optional[Callable[[str], None]] = None) -> int:
    """Register the COCO instances set ``json_file`` (images under ``image_root``) as ``name``.

    Idempotent for the same files. Its ``thing_classes`` are read now, so the class count can
    be checked before training. ``parsed``: a dict where the parsed JSON is left (under its
    absolute path) for :func:`check_datasets`, which then does not read it again; ``progress``
    is called with a line before a large JSON is read. Returns the number of categories.
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
    _announce(json_file, name, progress)
    data = _read(json_file)
    classes = coco_categories(json_file, data)
    if parsed is not None:
        parsed[os.path.abspath(json_file)] = data
    register_coco_instances(name, {"thing_classes": classes}, json_file, image_root)
    return len(classes)


def _announce(json_file: str, name: str, progress: Optional[Callable[[str], None]]) -> None:
    if progress is not None and os.path.getsize(json_file) >= _ANNOUNCE_BYTES:
        progress(f"reading {json_file} ({os.path.getsize(json_file) / 2**20:.0f} MiB) to check dataset {name!r} ...")


def check_datasets(cfg, train: bool = True, test: bool = True, all_sizes: bool = False,
                   parsed: Optional[Dict[str, dict]] = None,
                   progress: Optional[Callable[[str], None]] = None) -> List[CocoCheck]:
    """Every set the run reads (``DATASETS.TRAIN`` when ``train``, ``DATASETS.TEST`` when
    ``test``) is registered, its files exist, (where its categories are known) their number
    is the detectors' class count (``mgd.config.class_count_keys``), and (for a COCO instances file with an image folder)
    its contents pass ``check_coco_set``.

    Args:
        all_sizes: read every image's size, not a sample (``check_coco_set``).
        parsed: {absolute JSON path: parsed JSON} already read (``register_coco_dataset``);
            entries are used, then removed (the memory is freed).
        progress: called with a line before a large JSON is read.
    Returns:
        one :class:`CocoCheck` per set checked; their ``warnings`` are for the user.
    Raises:
        DatasetError: the first set that cannot be used, in one line.
    """
    class_counts = {key: cfg.MODEL[key.split(".")[1]].NUM_CLASSES for key in class_count_keys(cfg)}
    trained = list(cfg.DATASETS.TRAIN) if train else []
    evaluated = list(cfg.DATASETS.TEST) if test else []
    parsed = {} if parsed is None else parsed
    checks = []
    for name in dict.fromkeys(trained + evaluated):  # each once, in order
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
        for key, num_classes in class_counts.items():
            if classes is not None and len(classes) != num_classes:
                raise DatasetError(f"dataset {name!r} has {len(classes)} categories but {key} is {num_classes}; "
                                   f"set {key} {len(classes)}")
        if json_file is None or image_root is None or getattr(meta, "evaluator_type", "coco") != "coco":
            continue  # not a COCO instances set with an image folder: nothing more to read
        data = parsed.pop(os.path.abspath(json_file), None)
        if data is None:
            _announce(json_file, name, progress)
            data = _read(json_file)
        check = check_coco_set(name, json_file, image_root, evaluated=name in evaluated,
                               trained=name in trained, all_sizes=all_sizes, data=data)
        del data
        if check.errors:
            raise DatasetError(f"dataset {name!r} ({json_file}): " + "; ".join(check.errors))
        checks.append(check)
    return checks


def dataset_sizes(name: str) -> dict:
    """{"name", "json_file", "image_root", "images", "annotations"} of a registered set, as its
    JSON holds them (counts None when it is not a readable COCO file)."""
    meta = MetadataCatalog.get(name)
    json_file, image_root = getattr(meta, "json_file", None), getattr(meta, "image_root", None)
    sizes = {"name": name, "json_file": json_file, "image_root": image_root, "images": None,
             "annotations": None}
    if json_file is not None:
        try:
            data = read_coco_json(json_file)
            sizes.update(images=len(data["images"]), annotations=len(data["annotations"]))
        except ValueError:
            pass
    return sizes
