"""The contents of a COCO instances file and its images, checked before a run reads them.

:func:`check_coco_set` finds, in one pass, what would end a run with a traceback later (or
give a silently wrong answer) and what the pinned Detectron2 quietly drops or clips:

* errors (``CocoCheck.errors``): a missing key, duplicate image / annotation / category ids,
  a ``bbox`` that is not 4 finite numbers, a ``category_id`` not in ``categories``
  (``load_coco_json``'s ``id_map[...]``: a ``KeyError``), ``ignore`` set (Detectron2 asserts),
  ``area`` missing in a set that is evaluated (its COCO evaluation reads it), image files
  missing under the image folder, unreadable, or of another size than the JSON's
  ``width``/``height`` (``check_image_size``: ``SizeMismatchError`` when the image comes up);
  A box of negative width or height is an error too: the pin's ``apply_box`` takes the min
  and max of its corners, so training would use the box mirrored about its corner;
* warnings (``CocoCheck.warnings``): boxes of zero width or height, or entirely outside the
  image, which training drops (``transform_instance_annotations`` clips every box to the
  image, ``filter_empty_instances`` then drops those with a side <= 1e-5), boxes reaching
  more than :data:`TOLERANCE_PX` past the image, which training clips, and annotations whose
  ``image_id`` is no image (``load_coco_json`` and COCO evaluation ignore them). In a set
  that is evaluated these boxes stay as they are: COCO AP counts an empty or outside box as an
  object no detection can match.

What is read in full and what is sampled: the JSON and every annotation in full; file
existence of every image, from one listing of each image folder; image sizes from the file
headers (PIL, honouring the EXIF orientation as ``read_image`` does) of every image when
there are at most :data:`SIZE_SAMPLE`, else of :data:`SIZE_SAMPLE` images spread evenly over
the set (``all_sizes=True`` reads every one; a mismatch outside the sample still stops
training, as a ``SizeMismatchError``, when that image comes up). Nothing is cached.
"""
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["CocoCheck", "check_coco_set", "read_coco_json", "SIZE_SAMPLE", "TOLERANCE_PX"]

#: image headers read per set unless all are asked for (their cost: docs/own-data.md)
SIZE_SAMPLE = 5000
#: how far (pixels) a box may reach past the image before it counts as "past the image"
TOLERANCE_PX = 1.0
#: names / ids shown per fault
SHOWN = 3
_EXIF_ORIENTATION = 274
_SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EMPTY_SIDE = 1e-5  # filter_empty_instances' box_threshold


@dataclass
class CocoCheck:
    """What :func:`check_coco_set` found in one set; messages are clauses of one line."""

    name: str
    json_file: str
    image_root: str
    images: int = 0
    annotations: int = 0
    categories: int = 0
    sizes_read: int = 0
    seconds: float = 0.0
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: what was checked, how much of it, and how long it took."""
        sampled = ("" if self.sizes_read >= self.images
                   else f" (a sample; --check-all-images reads all {self.images})")
        return (f"dataset {self.name!r}: {self.images} images, {self.annotations} annotations, "
                f"{self.categories} categories checked (every image file present; sizes of {self.sizes_read} images "
                f"read{sampled}) in {self.seconds:.1f} s")


def read_coco_json(json_file: str) -> dict:
    """The parsed instances file; ValueError (one line) if it is not JSON or not COCO."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read COCO annotations {json_file}: {type(error).__name__}: "
                         f"{' '.join(str(error).split())}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise ValueError(f"{json_file} is not a COCO instances file (needs the lists 'images', "
                         "'annotations' and 'categories')")
    return data


def _shown(items: Sequence, total: Optional[int] = None) -> str:
    """The first SHOWN items, comma-separated, with ', ...' when there are more."""
    total = len(items) if total is None else total
    return ", ".join(str(x) for x in items[:SHOWN]) + (", ..." if total > SHOWN else "")


def _sorted_ids(ids: Iterable) -> List:
    """Numbers in order, then anything else by its text."""
    return sorted(ids, key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))


def _duplicates(values: Iterable) -> List:
    return [v for v, n in Counter(values).items() if n > 1]


def _missing_keys(records: List[dict], keys: Tuple[str, ...], what: str) -> Optional[str]:
    """'N images lack 'width' (first: images[3])' for the first key some record lacks."""
    required = set(keys)
    if all(type(r) is dict and r.keys() >= required for r in records):
        return None
    for key in keys:
        lacking = [i for i, r in enumerate(records) if not isinstance(r, dict) or key not in r]
        if lacking:
            return f"{len(lacking)} {what} lack {key!r} (first: {what}[{lacking[0]}])"
    return f"{what} must be JSON objects"


def _image_size(path: str) -> Tuple[int, int]:
    """(width, height) of an image as Detectron2's read_image returns it (EXIF orientation
    applied), from the file header only. Raises OSError / PIL's errors if unreadable."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        # the EXIF block read with the header (JPEG APP1, a PNG eXIf chunk before the pixels);
        # Image.getexif() of a PNG without it would decode the whole image
        if "exif" in image.info and image.getexif().get(_EXIF_ORIENTATION) in _SIDEWAYS:
            width, height = height, width
    return width, height


def _listed(folders: Iterable[str]) -> Dict[str, set]:
    """{folder: names in it} from one listing per folder (empty when it cannot be listed)."""
    found = {}
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                found[folder] = {entry.name for entry in entries}
        except OSError:
            found[folder] = set()
    return found


def _spread(items: List, count: int) -> List:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[(i * len(items)) // count] for i in range(count)]


def _check_boxes(data: dict, images: Dict, evaluated: bool, trained: bool, check: CocoCheck) -> None:
    """The annotations' ids, categories and boxes (non-crowd boxes against their image)."""
    annotations = data["annotations"]
    lacking = _missing_keys(annotations, ("id", "image_id", "category_id", "bbox"), "annotations")
    if lacking:
        check.errors.append(lacking)
        return
    duplicated = _duplicates(a["id"] for a in annotations)
    if duplicated:  # load_coco_json asserts unique ids (but for COCO 2014's minival files)
        text = f"{len(duplicated)} annotation ids appear more than once ({_shown(duplicated)})"
        (check.warnings if "minival" in check.json_file else check.errors).append(text)
    category_ids = {c["id"] for c in data["categories"]}
    unknown, bad_box, ignored, no_area, orphans = [], [], [], [], []
    negative, empty, outside, past = [], [], [], []
    tol, isfinite = TOLERANCE_PX, math.isfinite
    for a in annotations:  # 860k for COCO train: kept lean
        if a["category_id"] not in category_ids:
            unknown.append(a)
        if "ignore" in a and a["ignore"]:
            ignored.append(a["id"])
        if evaluated and "area" not in a:
            no_area.append(a["id"])
        box = a["bbox"]
        try:  # a string, None or list coordinate raises TypeError; nan or inf is not finite
            x, y, w, h = box
            if type(box) is not list or not isfinite(x + y + w + h + 0.0):
                raise TypeError
        except (TypeError, ValueError):
            bad_box.append(a)
            continue
        image = images.get(a["image_id"])
        if image is None:
            orphans.append(a["id"])
            continue
        if "iscrowd" in a and a["iscrowd"]:
            continue  # crowd regions: not trained on, ignore regions in COCO evaluation
        width, height = image["width"], image["height"]
        if w < 0 or h < 0:
            negative.append(a["id"])
        elif w <= _EMPTY_SIDE or h <= _EMPTY_SIDE:
            empty.append(a["id"])
        elif x >= width or y >= height or x + w <= 0 or y + h <= 0:
            outside.append(a["id"])
        elif x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            past.append(a["id"])
    if unknown:
        ids = _sorted_ids({a["category_id"] for a in unknown})
        first = unknown[0]
        image = images.get(first["image_id"])
        where = f" in {image['file_name']}" if image else ""
        check.errors.append(
            f"{len(unknown)} annotations have a category_id that is not in 'categories' ({_shown(ids)}; "
            f"'categories' has ids {_shown(_sorted_ids(category_ids), len(category_ids))}; first: "
            f"annotation {first['id']}{where}); add the category or fix the annotations")
    if bad_box:
        first = bad_box[0]
        check.errors.append(f"{len(bad_box)} annotations have a bbox that is not 4 finite numbers "
                            f"[x, y, width, height] (first: annotation {first['id']}: {first['bbox']!r})")
    if negative:  # the pin's apply_box takes the corners' min and max: a mirrored box, not dropped
        check.errors.append(f"{len(negative)} boxes have a negative width or height (annotations {_shown(negative)}), "
                            "which Detectron2 turns into another box; COCO's bbox is [x, y, width, height] "
                            "with width, height >= 0")
    if ignored:
        check.errors.append(f"{len(ignored)} annotations set 'ignore', which Detectron2 does not support "
                            f"(first: {_shown(ignored)}); mark such regions with 'iscrowd': 1")
    if no_area:
        check.errors.append(f"{len(no_area)} annotations lack 'area', which COCO evaluation reads "
                            f"(first: {_shown(no_area)}); add the box's (or mask's) area in pixels")
    if orphans:
        check.warnings.append(f"{len(orphans)} annotations name an image_id that is not in 'images' "
                              f"(first: {_shown(orphans)}); Detectron2 and COCO evaluation ignore them")
    _box_warnings(empty, outside, past, len(annotations), evaluated, trained, check)


def _box_warnings(empty, outside, past, total, evaluated, trained, check) -> None:
    dropped = []
    if empty:
        dropped.append(f"{len(empty)} of zero width or height (annotations {_shown(empty)})")
    if outside:
        dropped.append(f"{len(outside)} entirely outside their image (annotations {_shown(outside)})")
    if dropped:
        effects = []
        if trained:
            effects.append("training drops them (Detectron2's filter_empty_instances)")
        if evaluated:
            effects.append("COCO AP counts each as an object no detection can match")
        check.warnings.append(f"boxes {' and '.join(dropped)}: {'; '.join(effects)}")
    if past:
        share = len(past) / max(total, 1)
        effects = []
        if trained:
            effects.append("training clips them to the image (transform_instance_annotations)")
        if evaluated:
            effects.append("COCO AP compares detections with the unclipped boxes")
        hint = (f"; {100 * share:.0f} % of the boxes: are they [x0, y0, x1, y1]? COCO's bbox is "
                "[x, y, width, height]" if share >= 0.05 else "")
        check.warnings.append(f"{len(past)} boxes reach more than {TOLERANCE_PX:g} px past their image "
                              f"(annotations {_shown(past)}): {'; '.join(effects)}{hint}")


def _check_images(data: dict, check: CocoCheck, all_sizes: bool) -> Dict:
    """The images' keys and ids; then their files: existence (all), sizes (all or a sample).
    Returns {image id: image record} (empty when the records are unusable)."""
    images = data["images"]
    lacking = _missing_keys(images, ("id", "file_name", "width", "height"), "images")
    if lacking:
        check.errors.append(lacking)
        return {}
    bad = [img["id"] for img in images
           if not all(isinstance(img[k], int) and not isinstance(img[k], bool) and img[k] > 0
                      for k in ("width", "height"))]
    if bad:
        check.errors.append(f"{len(bad)} images have a width or height that is not a positive whole "
                            f"number (first: image {_shown(bad)})")
        return {}
    duplicated = _duplicates(img["id"] for img in images)
    if duplicated:
        check.errors.append(f"{len(duplicated)} image ids appear more than once ({_shown(duplicated)})")
    by_id = {img["id"]: img for img in images}

    paths = [os.path.join(check.image_root, str(img["file_name"])) for img in images]
    split = [os.path.split(path) for path in paths]
    listed = _listed({folder for folder, _ in split})
    present, missing = [], []
    for img, path, (folder, base) in zip(images, paths, split):
        if base in listed[folder]:
            present.append((img, path))
        else:
            missing.append(str(img["file_name"]))
    if missing:
        check.errors.append(f"{len(missing)} of {len(images)} images are missing under {check.image_root} "
                            f"({_shown(missing)})")
    wrong, unreadable = [], []
    to_read = present if all_sizes else _spread(present, SIZE_SAMPLE)
    for img, path in to_read:
        try:
            size = _image_size(path)
        except Exception as error:  # PIL raises several kinds for a file that is no image
            unreadable.append(f"{img['file_name']}: {type(error).__name__}")
            continue
        if size != (img["width"], img["height"]):
            wrong.append(f"{img['file_name']} is {size[0]}x{size[1]}, the JSON says "
                         f"{img['width']}x{img['height']}")
    check.sizes_read = len(to_read)
    of = f"{len(to_read)} read" + ("" if len(to_read) == len(images) else f" of {len(images)}")
    if unreadable:
        check.errors.append(f"{len(unreadable)} of {of} images cannot be read as images ({_shown(unreadable)})")
    if wrong:
        check.errors.append(f"{len(wrong)} of {of} images differ in size from the JSON's width x height "
                            f"({_shown(wrong)}); fix 'width'/'height' (Detectron2 stops at such an image)")
    return by_id


def check_coco_set(name: str, json_file: str, image_root: str, evaluated: bool = True,
                   trained: bool = True, all_sizes: bool = False,
                   data: Optional[dict] = None) -> CocoCheck:
    """Check the COCO instances file ``json_file`` and its images under ``image_root``.

    Args:
        name: the dataset's registered name (for the messages).
        evaluated: the run evaluates on it (``area`` is needed; box faults change the AP).
        trained: the run trains on it (box faults are dropped or clipped).
        all_sizes: read every image header, not a sample of :data:`SIZE_SAMPLE`.
        data: the parsed JSON, if already read.
    Returns:
        a :class:`CocoCheck`; its errors and warnings are empty when all is well.
    Raises:
        ValueError: the file is not JSON or not a COCO instances file (one line).
    """
    start = time.perf_counter()
    check = CocoCheck(name, json_file, image_root)
    data = read_coco_json(json_file) if data is None else data
    check.images, check.annotations = len(data["images"]), len(data["annotations"])
    check.categories = len(data["categories"])
    lacking = _missing_keys(data["categories"], ("id", "name"), "categories")
    duplicated = [] if lacking else _duplicates(c["id"] for c in data["categories"])
    if lacking or duplicated:
        check.errors.append(lacking or f"category ids appear more than once ({_shown(duplicated)})")
    else:
        try:
            images = _check_images(data, check, all_sizes)
            if images:
                _check_boxes(data, images, evaluated, trained, check)
        except TypeError:  # an id or category_id that is a list or an object
            check.errors.append("image, annotation and category ids must be numbers or strings")
    check.seconds = time.perf_counter() - start
    return check
