"""Time the dataset check (d2/data/mgd_coco_checks.py) on a COCO-sized set.

    python benchmarks/bench_dataset_check.py --dir /tmp/coco_like [--images 118287] \
        [--annotations 860001] [--cold]

Writes, once (kept in --dir for later runs), a COCO instances JSON with COCO train2017's
counts (118,287 images, 860,001 annotations, 80 categories; each annotation with a
24-point polygon so the file is about COCO's 448 MB) and one small JPEG per image (64-112 x
48-80 px; only headers are read, so the pixel count does not matter). Then times, one run
each, wall-clock and CPU seconds: the JSON parse, listing the image folder, PIL's header read
per image, ``check_coco_set`` of the parsed JSON with its default size sample and with every
size read, and (``--detectron2``, with the pin on PYTHONPATH) Detectron2's own
``load_coco_json`` of the file, which every run pays anyway. ``--cold`` evicts the image files
from the page cache first (posix_fadvise DONTNEED, no root needed) for the all-sizes run.
Reports the load average: the machine may be shared.
"""
import argparse
import json
import os
import random
import time

from mgd.bootstrap import use_detectron2_with_overlay

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
use_detectron2_with_overlay(REPO)
from detectron2.data import mgd_coco_checks as checks  # noqa: E402


def write_set(folder: str, images: int, annotations: int) -> str:
    """The JSON and the images under folder/; returns the JSON's path (reused if present)."""
    json_file = os.path.join(folder, "instances.json")
    if os.path.exists(json_file):
        return json_file
    import numpy as np
    from PIL import Image

    image_dir = os.path.join(folder, "images")
    os.makedirs(image_dir, exist_ok=True)
    rng = random.Random(0)
    records, start = [], time.perf_counter()
    pixels = np.random.default_rng(0).integers(0, 255, (80, 112, 3), dtype=np.uint8)
    for i in range(images):
        width, height = 64 + 8 * (i % 7), 48 + 8 * (i % 5)
        name = f"{i + 1:012d}.jpg"
        Image.fromarray(pixels[:height, :width]).save(os.path.join(image_dir, name), quality=85)
        records.append({"id": i + 1, "file_name": name, "width": width, "height": height})
        if (i + 1) % 20000 == 0:
            print(f"  {i + 1} images written ({time.perf_counter() - start:.0f} s)", flush=True)
    anns = []
    for j in range(annotations):
        img = records[j % images]
        w, h = rng.uniform(2, img["width"] / 2), rng.uniform(2, img["height"] / 2)
        x, y = rng.uniform(0, img["width"] - w), rng.uniform(0, img["height"] - h)
        polygon = [round(v, 2) for k in range(24) for v in (x + w * (k % 5) / 4, y + h * (k % 3) / 2)]
        anns.append({"id": j + 1, "image_id": img["id"], "category_id": 1 + j % 80,
                     "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                     "area": round(w * h, 2), "iscrowd": 0, "segmentation": [polygon]})
    categories = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in range(1, 81)]
    with open(json_file + ".part", "w") as f:
        json.dump({"images": records, "annotations": anns, "categories": categories}, f)
    os.replace(json_file + ".part", json_file)
    return json_file


def evict(folder: str) -> None:
    for entry in os.scandir(folder):
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class Timer:
    """Wall-clock and CPU seconds of a block (CPU: this process; I/O waits are not CPU)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self):
        return f"{self.wall:.1f} s wall, {self.cpu:.1f} s CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="folder for the generated set (kept)")
    p.add_argument("--images", type=int, default=118287)
    p.add_argument("--annotations", type=int, default=860001)
    p.add_argument("--cold", action="store_true", help="evict the images from the page cache first")
    p.add_argument("--detectron2", action="store_true",
                   help="also time Detectron2's own load_coco_json of the file (what a run pays anyway)")
    args = p.parse_args()
    json_file = write_set(args.dir, args.images, args.annotations)
    image_dir = os.path.join(args.dir, "images")
    print(f"set: {json_file} ({os.path.getsize(json_file) / 2**20:.0f} MiB), {args.images} images, "
          f"{args.annotations} annotations; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")

    with Timer() as t:
        with open(json_file) as f:
            data = json.load(f)
    print(f"json.load: {t}")
    with Timer() as t:
        names = set(os.listdir(image_dir))
    print(f"one listing of the image folder ({len(names)} names): {t}")
    sample = sorted(names)[:: max(1, len(names) // 2000)]
    with Timer() as t:
        for name in sample:
            checks._image_size(os.path.join(image_dir, name))
    print(f"PIL header read: {1e6 * t.wall / len(sample):.0f} us wall, {1e6 * t.cpu / len(sample):.0f} us CPU "
          f"per image ({len(sample)} images, warm cache)")

    with Timer() as t:
        check = checks.check_coco_set("bench", json_file, image_dir, data=data)
    assert not check.errors and not check.warnings, (check.errors, check.warnings)
    print(f"check of the parsed JSON, sizes of {check.sizes_read} images (the default sample): {t}")
    if args.cold:
        evict(image_dir)
    with Timer() as t:
        check = checks.check_coco_set("bench", json_file, image_dir, data=data, all_sizes=True)
    assert not check.errors, check.errors
    print(f"check of the parsed JSON, every size read{' (cold page cache)' if args.cold else ''}: {t}")
    del data
    if args.detectron2:
        from detectron2.data.datasets import load_coco_json

        with Timer() as t:
            load_coco_json(json_file, image_dir, "bench_coco_like")
        print(f"Detectron2's load_coco_json of the same file: {t}")
    print(f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
