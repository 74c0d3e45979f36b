"""Register the synthetic COCO-format set (scripts/make_synthetic_coco.py) with Detectron2.

    from scripts.synthetic_dataset import register_synthetic_coco
    register_synthetic_coco("datasets/mgd_synth")   # -> ("mgd_synth_train", "mgd_synth_val")

Detectron2 is imported inside the function only, so this module imports anywhere. It needs
nothing else from this folder.
"""

import os
from typing import Tuple

SPLITS = ("train", "val")


def synthetic_coco_paths(root, split):
    """(json_file, image_root) of one split of a set written by make_synthetic_coco.py."""
    root = os.fspath(root)
    return (os.path.join(root, "annotations", f"instances_{split}.json"),
            os.path.join(root, split))


def register_synthetic_coco(root="datasets/mgd_synth", name_prefix="mgd_synth") -> Tuple[str, ...]:
    """Register ``{name_prefix}_train`` and ``{name_prefix}_val`` as COCO instance datasets.

    Idempotent: a name that is already registered with the same files is left alone; one
    registered with other files raises ValueError. A missing set raises FileNotFoundError
    saying how to create it.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    names = []
    for split in SPLITS:
        json_file, image_root = synthetic_coco_paths(root, split)
        if not os.path.isfile(json_file) or not os.path.isdir(image_root):
            raise FileNotFoundError(
                f"synthetic dataset not found at {os.fspath(root)!r} (no {json_file}); create "
                f"it with: python scripts/make_synthetic_coco.py --out {os.fspath(root)}")
        name = f"{name_prefix}_{split}"
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            if os.path.abspath(getattr(meta, "json_file", "")) != os.path.abspath(json_file):
                raise ValueError(f"dataset {name!r} is already registered with "
                                 f"{getattr(meta, 'json_file', None)!r}, not {json_file!r}")
        else:
            register_coco_instances(name, {}, json_file, image_root)
        names.append(name)
    return tuple(names)
