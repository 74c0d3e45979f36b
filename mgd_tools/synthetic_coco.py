"""A small synthetic COCO-format detection set, generated deterministically from a seed.

Design (a small-scale study found this design trains to a clear teacher-student gap on CPU;
docs/demo.md gives the figures):

* square RGB images (default 128x128), a train and a val split (default 320 / 120);
* 4 categories, each a shape x colour pair - red circle, blue circle, red square, blue
  triangle - so neither the shape nor the colour alone gives the class;
* hue / saturation / brightness jitter, a soft shading ramp, and stripes (darker bands) on
  some objects; none of these changes the class;
* 1-4 labelled objects and 1-4 unlabelled distractors per image: class shapes in a wrong
  colour (blue square, red triangle, green/yellow/purple circles ...), rings, crosses, lines;
* object sizes log-uniform in [10, 56] px, random rotation for squares, triangles, crosses,
  lines;
* low-saturation gradient backgrounds with soft colour blobs, plus Gaussian pixel noise;
* occlusion (and cropping at the image border) is allowed as long as every labelled object
  keeps >= 55 % of its pixels visible; its box is the bounding box of its visible pixels and
  its area the number of visible pixels.

Everything is vectorised numpy (each shape is drawn from a signed distance on its own window,
with one pixel of anti-aliasing), so 440 images take a couple of seconds. Each image has its
own random stream ``default_rng([seed, split, index])``: the same seed gives byte-identical
JSON and images, and the first N images do not depend on how many are generated.

Layout written (atomically: built in a temporary sibling folder, then renamed)::

    OUT/train/000001.png ...     OUT/val/000001.png ...
    OUT/annotations/instances_train.json   OUT/annotations/instances_val.json
    OUT/synthetic.json           (the generator's parameters; marks the folder as ours)

Only numpy and Pillow are needed.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from mgd.errors import UserError  # the repository root is on sys.path (make_synthetic_coco.py)

GENERATOR_VERSION = 1
MARKER = "synthetic.json"

CATEGORIES = [
    {"id": 1, "name": "red_circle", "supercategory": "shape"},
    {"id": 2, "name": "blue_circle", "supercategory": "shape"},
    {"id": 3, "name": "red_square", "supercategory": "shape"},
    {"id": 4, "name": "blue_triangle", "supercategory": "shape"},
]
CLASS_OF = {("circle", "red"): 1, ("circle", "blue"): 2, ("square", "red"): 3,
            ("triangle", "blue"): 4}
HUES = {"red": 0.0, "blue": 0.62, "green": 0.33, "yellow": 0.15, "purple": 0.79}
CLASS_SHAPES = ("circle", "square", "triangle")
DISTRACTOR_SHAPES = ("circle", "square", "triangle", "ring", "cross", "line")

SPLITS = ("train", "val")


class SyntheticDataError(UserError):
    """A user-facing problem (bad arguments, an output folder that cannot be written)."""


@dataclass
class SynthConfig:
    seed: int = 0
    num_train: int = 320
    num_val: int = 120
    size: int = 128
    min_object: float = 10.0
    max_object: float = 56.0
    min_labelled: int = 1
    max_labelled: int = 4
    min_distractors: int = 1
    max_distractors: int = 4
    min_visible: float = 0.55
    stripe_prob: float = 0.35
    hue_jitter: float = 0.035
    noise: Tuple[float, float] = (3.0, 9.0)
    version: int = field(default=GENERATOR_VERSION)

    def validate(self) -> None:
        if self.num_train < 0 or self.num_val < 0 or self.num_train + self.num_val == 0:
            raise SyntheticDataError("--train and --val must be >= 0 and not both 0")
        if self.size < 32:
            raise SyntheticDataError(f"--size {self.size} is too small; use 32 or more")
        if not 2 <= self.min_object <= self.max_object <= self.size:
            raise SyntheticDataError("object sizes need 2 <= min <= max <= image size "
                                     f"(got {self.min_object}..{self.max_object}, "
                                     f"size {self.size})")
        if not 1 <= self.min_labelled <= self.max_labelled:
            raise SyntheticDataError("labelled objects per image need 1 <= min <= max")
        if not 0 <= self.min_distractors <= self.max_distractors:
            raise SyntheticDataError("distractors per image need 0 <= min <= max")
        if not 0 < self.min_visible <= 1:
            raise SyntheticDataError("--min-visible must be in (0, 1]")


# --------------------------------------------------------------------------------------
# Shapes: signed distance (pixels, > 0 inside) on a local window
# --------------------------------------------------------------------------------------

@dataclass
class Shape:
    kind: str            # circle | square | triangle | ring | cross | line
    colour: str          # colour name (hue family)
    cx: float
    cy: float
    diameter: float      # nominal size D (log-uniform)
    angle: float         # rotation, radians
    rgb: np.ndarray      # base colour, float32 [3] in 0..255
    label: Optional[int]  # category id, None for a distractor
    params: Dict[str, float]
    full_area: int = 0   # pixels of the whole shape (before occlusion and image borders)

    def extent(self) -> float:
        """Radius of a circle around (cx, cy) that contains the whole shape."""
        return 0.5 * self.diameter * 1.5 + 2.0

    def sdf(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        dx, dy = xs - self.cx, ys - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        r = 0.5 * self.diameter
        if self.kind == "circle":
            return r - np.sqrt(dx * dx + dy * dy)
        if self.kind == "ring":
            dist = np.sqrt(dx * dx + dy * dy)
            return np.minimum(r - dist, dist - r * self.params["inner"])
        if self.kind == "square":
            h = r * 0.82
            return h - np.maximum(np.abs(u), np.abs(v))
        if self.kind == "triangle":
            # equilateral, circumradius ~ 0.62 D: inradius is half the circumradius
            inr = 0.5 * r * 1.25
            d = None
            for k in range(3):
                a = math.pi / 2 + k * 2 * math.pi / 3
                proj = u * math.cos(a) + v * math.sin(a)
                d = proj if d is None else np.maximum(d, proj)
            return inr - d
        if self.kind == "cross":
            w = r * self.params["width"]
            bar1 = np.minimum(r - np.abs(u), w - np.abs(v))
            bar2 = np.minimum(r - np.abs(v), w - np.abs(u))
            return np.maximum(bar1, bar2)
        if self.kind == "line":
            w = self.params["width"]
            return np.minimum(r - np.abs(u), w - np.abs(v))
        raise ValueError(self.kind)


def _rgb(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val), dtype=np.float32) * 255.0


def _object_colour(rng: np.random.Generator, colour: str, jitter: float) -> np.ndarray:
    hue = HUES[colour] + float(np.clip(rng.normal(0.0, jitter / 2), -jitter, jitter))
    return _rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.5, 0.95))


def _random_shape(rng: np.random.Generator, cfg: SynthConfig, labelled: bool) -> Shape:
    if labelled:
        kind, colour = list(CLASS_OF)[int(rng.integers(len(CLASS_OF)))]
        label = CLASS_OF[(kind, colour)]
    else:
        label = None
        kind = DISTRACTOR_SHAPES[int(rng.integers(len(DISTRACTOR_SHAPES)))]
        if kind in CLASS_SHAPES:  # a class shape in a colour that is not its class's
            colours = [c for c in HUES if (kind, c) not in CLASS_OF]
        else:
            colours = list(HUES)
        colour = colours[int(rng.integers(len(colours)))]
    return make_shape(rng, cfg, kind, colour, label)


def make_shape(rng: np.random.Generator, cfg: SynthConfig, kind: str, colour: str, label: Optional[int]) -> Shape:
    """A shape of ``kind`` and ``colour`` at (0, 0): size log-uniform in the config's range,
    random rotation (not for circles and rings), jittered colour."""
    diameter = float(math.exp(rng.uniform(math.log(cfg.min_object), math.log(cfg.max_object))))
    if kind == "line":
        diameter = max(diameter, cfg.min_object * 1.5)
    params = {}
    if kind == "ring":
        params["inner"] = float(rng.uniform(0.45, 0.7))
    elif kind == "cross":
        params["width"] = float(rng.uniform(0.14, 0.24))
    elif kind == "line":
        params["width"] = float(rng.uniform(1.0, 2.5))
    angle = 0.0 if kind in ("circle", "ring") else float(rng.uniform(0, 2 * math.pi))
    rgb = _object_colour(rng, colour, cfg.hue_jitter)
    return Shape(kind, colour, 0.0, 0.0, diameter, angle, rgb, label, params)


# --------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------

def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Low-saturation linear gradient plus soft colour blobs, float32 [n, n, 3]."""
    c0 = _rgb(rng.uniform(), rng.uniform(0.03, 0.25), rng.uniform(0.35, 0.85))
    c1 = _rgb(rng.uniform(), rng.uniform(0.03, 0.25), rng.uniform(0.35, 0.85))
    psi = float(rng.uniform(0, 2 * math.pi))
    coords = np.arange(n, dtype=np.float32) + 0.5
    t = coords[None, :] * math.cos(psi) + coords[:, None] * math.sin(psi)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = (c0 + (c1 - c0) * t[..., None]).astype(np.float32)
    for _ in range(int(rng.integers(2, 7))):
        col = _rgb(rng.uniform(), rng.uniform(0.05, 0.35), rng.uniform(0.25, 0.95))
        bx, by = (float(v) for v in rng.uniform(0, n, size=2))
        sigma = float(rng.uniform(0.05, 0.2)) * n
        amp = float(rng.uniform(0.2, 0.55))
        # separable Gaussian on its +-3 sigma window (the cut is < 1 grey level)
        x0, x1 = max(int(bx - 3 * sigma), 0), min(int(bx + 3 * sigma) + 1, n)
        y0, y1 = max(int(by - 3 * sigma), 0), min(int(by + 3 * sigma) + 1, n)
        if x0 >= x1 or y0 >= y1:
            continue
        gx = np.exp(-((coords[x0:x1] - bx) ** 2) / (2 * sigma * sigma))
        gy = np.exp(-((coords[y0:y1] - by) ** 2) / (2 * sigma * sigma))
        g = (amp * gy[:, None] * gx[None, :])[..., None]
        win = img[y0:y1, x0:x1]
        win += (col - win) * g
    return img.astype(np.float32, copy=False)


def _window(shape: Shape, n: int):
    """Integer bounds (x0, x1, y0, y1) of the shape's full window, possibly beyond the image."""
    e = shape.extent()
    x0, x1 = int(math.floor(shape.cx - e)), int(math.ceil(shape.cx + e)) + 1
    y0, y1 = int(math.floor(shape.cy - e)), int(math.ceil(shape.cy + e)) + 1
    return x0, x1, y0, y1


def _shape_sdf(shape: Shape, n: int):
    """(sdf on the part of the window inside the image, slices, full-shape pixel count)."""
    x0, x1, y0, y1 = _window(shape, n)
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5
    sdf = shape.sdf(xs[None, :], ys[:, None])
    full = int(np.count_nonzero(sdf > 0))
    cx0, cx1, cy0, cy1 = max(x0, 0), min(x1, n), max(y0, 0), min(y1, n)
    if cx0 >= cx1 or cy0 >= cy1:
        return None, None, full
    inner = sdf[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return inner, (slice(cy0, cy1), slice(cx0, cx1)), full


_GRIDS: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}


def _grid(n: int):
    """Pixel-centre coordinates (ys, xs), each [n, n] float32; cached, read-only."""
    if n not in _GRIDS:
        ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
        ys.flags.writeable = False
        xs.flags.writeable = False
        _GRIDS[n] = (ys, xs)
    return _GRIDS[n]


@dataclass
class Placed:
    """A shape on the canvas: its signed distance on the in-image part of its window."""
    shape: Shape
    sdf: np.ndarray      # float32 [h, w], > 0 inside
    window: tuple        # (slice of rows, slice of columns) of the image
    full_area: int       # pixels of the whole shape


def _object_kinds(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Drawing order of the image's objects: True for a labelled object, False for a distractor."""
    n_lab = int(rng.integers(cfg.min_labelled, cfg.max_labelled + 1))
    n_dis = int(rng.integers(cfg.min_distractors, cfg.max_distractors + 1))
    kinds = np.array([True] * n_lab + [False] * n_dis)
    rng.shuffle(kinds)
    return kinds


def _random_position(rng: np.random.Generator, shape: Shape, n: int) -> None:
    """Centre a labelled shape inside the image; a distractor may stick out of it."""
    r = 0.5 * shape.diameter
    if shape.label is not None:
        shape.cx, shape.cy = rng.uniform(r * 0.8, n - r * 0.8, size=2)
    else:
        shape.cx, shape.cy = rng.uniform(-0.2 * r, n + 0.2 * r, size=2)


def _visible_after(owner: np.ndarray, placed: List[Placed], visible: List[int], sl: tuple,
                   mask: np.ndarray) -> np.ndarray:
    """Visible pixel count of every placed shape once ``mask`` (at ``sl``) covers them."""
    covered = owner[sl][mask]
    lost = np.bincount(covered[covered >= 0], minlength=len(placed))
    return np.asarray(visible, dtype=np.int64) - lost[:len(placed)]


def _place_objects(rng: np.random.Generator, cfg: SynthConfig, kinds: np.ndarray):
    """Place the objects bottom to top, each at up to 25 random positions, keeping every
    labelled object >= ``min_visible`` visible. Returns (owner map [n, n] int32: index of the
    top shape per pixel, -1 for background; placed shapes, bottom to top)."""
    n = cfg.size
    owner = np.full((n, n), -1, dtype=np.int32)
    placed: List[Placed] = []
    visible: List[int] = []   # visible pixel count per placed shape
    for labelled in kinds:
        for _attempt in range(25):
            shape = _random_shape(rng, cfg, bool(labelled))
            _random_position(rng, shape, n)
            sdf, sl, full = _shape_sdf(shape, n)
            if sdf is None or full == 0:
                continue
            mask = sdf > 0
            new_visible = _visible_after(owner, placed, visible, sl, mask)
            own = int(np.count_nonzero(mask))
            ok = all(new_visible[i] >= cfg.min_visible * p.full_area
                     for i, p in enumerate(placed) if p.shape.label is not None)
            if labelled and own < cfg.min_visible * full:
                ok = False
            if not ok:
                continue
            shape.full_area = full
            owner[sl][mask] = len(placed)
            visible[:] = list(new_visible)
            visible.append(own)
            placed.append(Placed(shape, sdf, sl, full))
            break
        # after 25 failed attempts the object is skipped (the image keeps >= 1 labelled
        # object: the first labelled object never fails for occlusion reasons)
    return owner, placed


def _shading(rng: np.random.Generator, cfg: SynthConfig, shape: Shape, win_x: np.ndarray,
             win_y: np.ndarray) -> np.ndarray:
    """Brightness factor on the shape's window: a soft ramp across it, and with probability
    ``stripe_prob`` darker bands. Neither changes the class."""
    ramp = rng.uniform(-0.18, 0.18)
    c, s = math.cos(shape.angle + 1.0), math.sin(shape.angle + 1.0)
    proj = ((win_x - shape.cx) * c + (win_y - shape.cy) * s) / max(shape.diameter, 1.0)
    shade = 1.0 + ramp * proj
    if rng.uniform() < cfg.stripe_prob:
        phi = rng.uniform(0, math.pi)
        period = rng.uniform(3.0, 7.0)
        phase = rng.uniform(0, 2 * math.pi)
        depth = rng.uniform(0.25, 0.5)
        along = (win_x - shape.cx) * math.cos(phi) + (win_y - shape.cy) * math.sin(phi)
        bands = np.sin(2 * math.pi * along / period + phase) > 0
        shade = shade * np.where(bands, 1.0 - depth, 1.0)
    return shade


def _paint(rng: np.random.Generator, cfg: SynthConfig, img: np.ndarray,
           placed: List[Placed]) -> None:
    """Alpha-blend the shapes into ``img`` (float32 [n, n, 3]) bottom to top, in place."""
    ys, xs = _grid(cfg.size)
    for p in placed:
        alpha = np.clip(p.sdf + 0.5, 0.0, 1.0)[..., None]
        col = np.broadcast_to(p.shape.rgb, alpha.shape[:2] + (3,)).astype(np.float32)
        col = col * _shading(rng, cfg, p.shape, xs[p.window], ys[p.window])[..., None]
        img[p.window] = img[p.window] * (1 - alpha) + col * alpha


def _add_noise(rng: np.random.Generator, cfg: SynthConfig, img: np.ndarray) -> np.ndarray:
    """Gaussian pixel noise (sigma uniform in ``cfg.noise``), rounded to uint8 [n, n, 3]."""
    sigma = float(rng.uniform(*cfg.noise))
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _annotations(owner: np.ndarray, placed: List[Placed]) -> List[dict]:
    """COCO annotations (without ids) of the labelled shapes: box and area of the visible part."""
    anns = []
    for idx, p in enumerate(placed):
        if p.shape.label is None:
            continue
        sy, sx = p.window
        rows, cols = np.nonzero(owner[p.window] == idx)
        if rows.size == 0:
            continue
        x0, x1 = sx.start + int(cols.min()), sx.start + int(cols.max()) + 1
        y0, y1 = sy.start + int(rows.min()), sy.start + int(rows.max()) + 1
        anns.append({
            "category_id": p.shape.label,
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "area": float(rows.size),
            "iscrowd": 0,
            "visible_fraction": round(rows.size / p.full_area, 4),
        })
    return anns


def generate_image(rng: np.random.Generator, cfg: SynthConfig, return_layers: bool = False):
    """Returns (uint8 image HxWx3, list of annotation dicts without ids).

    With ``return_layers`` also the owner map (index of the top shape per pixel, -1 for
    background) and the list of placed shapes (bottom to top), for checks. The steps draw
    from ``rng`` in this order, which fixes the generated set: background, object kinds,
    placement, painting, noise.
    """
    img = _background(rng, cfg.size)
    owner, placed = _place_objects(rng, cfg, _object_kinds(rng, cfg))
    _paint(rng, cfg, img, placed)
    img = _add_noise(rng, cfg, img)
    anns = _annotations(owner, placed)
    if return_layers:
        return img, anns, owner, [p.shape for p in placed]
    return img, anns


# --------------------------------------------------------------------------------------
# Whole set
# --------------------------------------------------------------------------------------

def generate_split(cfg: SynthConfig, split: str, image_dir: Optional[Path]) -> dict:
    """Images (written to ``image_dir`` as PNG if given) and the COCO dict of one split."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def save(img: np.ndarray, path: Path) -> None:
        Image.fromarray(img).save(path, format="PNG", compress_level=1)

    count = cfg.num_train if split == "train" else cfg.num_val
    split_id = SPLITS.index(split)
    images, annotations = [], []
    # PNG encoding releases the GIL: overlap it with drawing the next images.
    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for i in range(count):
            rng = np.random.default_rng([cfg.seed, split_id, i])
            img, anns = generate_image(rng, cfg)
            image_id = i + 1
            file_name = f"{image_id:06d}.png"
            if image_dir is not None:
                pending.append(pool.submit(save, img, image_dir / file_name))
            images.append({"id": image_id, "file_name": file_name, "width": cfg.size,
                           "height": cfg.size})
            for ann in anns:
                annotations.append(dict(ann, id=len(annotations) + 1, image_id=image_id))
        for fut in pending:
            fut.result()  # re-raise any write error
    return {
        "info": {"description": f"MGD synthetic shapes ({split}), seed {cfg.seed}",
                 "version": str(cfg.version), "year": 2020, "contributor": "mgd-d2",
                 "date_created": ""},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def _is_ours(path: Path) -> bool:
    return (path / MARKER).is_file()


def write_dataset(out, cfg: SynthConfig) -> dict:
    """Generate the set into ``out`` atomically. Returns a small summary dict.

    ``out`` may not exist yet (missing parent folders are created, as ``mkdir -p`` does), may be
    an empty folder, or may be a set written by this generator (it is replaced). Anything else
    is refused.
    """
    cfg.validate()
    out = Path(out)
    parent = Path(os.path.abspath(out)).parent
    if parent.exists() and not parent.is_dir():
        raise SyntheticDataError(f"cannot write {str(out)!r}: {str(parent)!r} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SyntheticDataError(f"cannot write {str(out)!r}: cannot create {str(parent)!r} "
                                 f"({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SyntheticDataError(f"cannot write {str(out)!r}: folder {str(parent)!r} is not "
                                 "writable")
    if out.exists():
        if not out.is_dir():
            raise SyntheticDataError(f"{str(out)!r} exists and is a file; choose another --out")
        if any(out.iterdir()) and not _is_ours(out):
            raise SyntheticDataError(f"{str(out)!r} exists and is not a set written by this "
                                     "generator; choose another --out or remove it")
    start = time.perf_counter()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as exc:
        raise SyntheticDataError(f"cannot write {str(out)!r}: {exc}") from None
    try:
        (tmp / "annotations").mkdir()
        counts = {}
        for split in SPLITS:
            (tmp / split).mkdir()
            coco = generate_split(cfg, split, tmp / split)
            (tmp / "annotations" / f"instances_{split}.json").write_text(_dumps(coco))
            counts[split] = (len(coco["images"]), len(coco["annotations"]))
        meta = dict(asdict(cfg), categories=[c["name"] for c in CATEGORIES],
                    generator="mgd_tools/synthetic_coco.py (scripts/make_synthetic_coco.py)")
        (tmp / MARKER).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.rmdir(trash)
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise SyntheticDataError(f"cannot write {str(out)!r}: {exc}") from None
        raise
    return {"out": str(out), "counts": counts, "seconds": time.perf_counter() - start}
