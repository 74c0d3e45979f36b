#!/usr/bin/env python
"""Mean matched channel cost (2 - 2 cos) of a student's features to a teacher's, on a dataset.

    python scripts/measure_matched_cost.py --config-file configs/demo_mgd_R50_R18.yaml \
        --teacher output/demo/base-R50/model_final.pth \
        --student output/demo/seed1/base-R18/model_final.pth \
        --dataset mgd_synth_val output/demo/data/annotations/instances_val.json output/demo/data/val \
        --out output/demo/seed1/matched_cost_student.json [KEY VALUE ...]

What MGD's matching minimises, measured outside training: MGDRetinaNet is built from the MGD
config, the teacher's weights go into ``t_net`` and the student's into ``s_net``, and one fresh
matching pass runs over every image of the config's first test set (``DATASETS.TEST[0]``, or
``--split``): ``reset_matching``, ``accumulate_matching`` on each batch (eval mode, no grad,
float32), ``finish_matching``. The result is, per distilled position, the mean over the
student's channels of the cost to the teacher channel they are matched to, the same figure the
training log prints as ``mgd/cost_<position>``. It compares raw taps: the distiller's student
norms, margins and loss factors do not enter it (the norms are left at their initialisation).

``--teacher`` / ``--student``: a RetinaNet checkpoint of that network (a base run's
``model_final.pth``, a split ``.pkl``) or an MGD checkpoint, whose ``t_net.`` / ``s_net.``
part is taken. Every tensor of the network must be there with its shape (mgd.checkpoint.strict
decides, as for an evaluation of that net: ``Role.TEACHER`` / ``Role.STUDENT``).

Writes ``--out`` (atomically)::

    {"costs": {"c2": 0.736, "c3": 0.997, ...}, "images": 120, "dataset": "mgd_synth_val",
     "teacher": "...", "student": "...", "config": "...", "seconds": 12.3}
"""
import argparse
import json
import os
import sys
import time

from mgd.bootstrap import use_detectron2_with_overlay
from mgd.checkpoint import (
    Role, atomic_write, check_model_load, check_weights_path, load_checkpoint, select_network, shapes_of)
from mgd.cli import OneLineArgumentParser, run_cli
from mgd.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
use_detectron2_with_overlay(REPO_ROOT)


class MeasureError(UserError):
    """A user-facing problem (one line, see mgd.errors)."""


def load_network(net, path: str, role: Role) -> None:
    """Copy the ``role``'s net of the checkpoint at ``path`` into ``net``; mgd.checkpoint.strict
    decides whether it may (every tensor of ``net`` there, with its shape)."""
    import numpy as np
    import torch

    what = f"{role.value} checkpoint"
    state = select_network(load_checkpoint(path, what=what), path, role, what=what)
    check_model_load(shapes_of(net.state_dict()), shapes_of(state), path, role, heuristics=False,
                     what=what)
    tensors = {k: torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v
               for k, v in state.items()}
    own = net.state_dict()  # checked above; buffers the config derives (pixel_mean, ...) may differ
    net.load_state_dict({k: tensors[k] for k, v in own.items()
                         if k in tensors and tuple(tensors[k].shape) == tuple(v.shape)}, strict=False)


def batches(dataset_dicts, mapper, batch_size: int):
    """The mapped dataset in order, ``batch_size`` images at a time (the last batch shorter)."""
    for start in range(0, len(dataset_dicts), batch_size):
        yield [mapper(d) for d in dataset_dicts[start:start + batch_size]]


def measure(args) -> dict:
    import torch

    try:
        from detectron2.data import DatasetCatalog, DatasetMapper
        from detectron2.data.mgd_datasets import register_coco_dataset
        from detectron2.engine.mgd_matching_pass import run_matching_pass
        from detectron2.engine.mgd_config_file import load_config
        from detectron2.modeling import build_model
        import detectron2.modeling.backbone.mgd_resnet  # noqa: F401  (registers the backbone)
        import detectron2.modeling.meta_arch.mgd_retinanet  # noqa: F401  (and MGDRetinaNet)
    except ImportError as error:
        raise MeasureError(f"the pinned Detectron2 with the MGD overlay is not importable "
                           f"({error}); run `make detectron2 overlay`") from None
    from mgd.config import is_mgd_config

    for name, json_file, image_root in args.dataset or ():  # a DatasetError or ConfigError is a UserError
        register_coco_dataset(name, json_file, image_root)
    cfg = load_config(args.config_file, args.opts)
    from detectron2.engine.mgd_scale import apply_scale

    apply_scale(cfg, args.scale, explicit=[str(k) for k in args.opts[0::2]])
    if not is_mgd_config(cfg):
        raise MeasureError(f"{args.config_file} is not an MGD config (MODEL.META_ARCHITECTURE "
                           "MGDRetinaNet or MGDDetector): the matched cost needs a teacher and a student")
    cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cfg.MODEL.WEIGHTS = ""
    if "AMP" in cfg.SOLVER:
        cfg.SOLVER.AMP.ENABLED = False  # the measurement runs in float32
    split = args.split or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    if split not in DatasetCatalog.list():
        raise MeasureError(f"dataset {split!r} is not registered; pass --dataset {split or 'NAME'} "
                           "JSON IMAGE_ROOT")
    torch.manual_seed(0)  # the distiller's norms, unused by the cost
    model = build_model(cfg)
    load_network(model.t_net, args.teacher, Role.TEACHER)
    load_network(model.s_net, args.student, Role.STUDENT)
    model.eval()
    dataset_dicts = DatasetCatalog.get(split)
    mapper = DatasetMapper(cfg, is_train=False)

    start = time.perf_counter()
    costs = run_matching_pass(model, batches(dataset_dicts, mapper, args.batch_size),
                              -(-len(dataset_dicts) // args.batch_size), label=f"matched cost on {split}")
    images = int(model.distiller.last_statistic.images)
    if images != len(dataset_dicts):
        raise MeasureError(f"the matching pass saw {images} images of {len(dataset_dicts)}")
    return {"costs": costs, "images": images, "dataset": split, "teacher": args.teacher,
            "student": args.student, "config": args.config_file,
            "seconds": round(time.perf_counter() - start, 2)}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="measure_matched_cost.py",
                              description="Mean matched channel cost of a student to a teacher.")
    p.add_argument("--config-file", required=True, metavar="FILE", help="an MGD config")
    p.add_argument("--teacher", required=True, help="teacher RetinaNet (or MGD) checkpoint")
    p.add_argument("--student", required=True, help="student RetinaNet (or MGD) checkpoint")
    p.add_argument("--dataset", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"),
                   help="register a COCO-format set (repeatable), as train_net.py --dataset")
    p.add_argument("--scale", default="coco", help="input sizes, as train_net.py --scale (make SCALE=): coco, data "
                   "or a shorter side in px; give the runs' own")
    p.add_argument("--split", default="", help="dataset to measure on (default DATASETS.TEST[0])")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward (default 4)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                   help="config overrides, as for train_net.py")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise MeasureError(f"--batch-size must be >= 1, got {args.batch_size}")
    for role in (Role.TEACHER, Role.STUDENT):
        check_weights_path(getattr(args, role.value), role, what=f"{role.value} checkpoint")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise MeasureError(f"cannot write {args.out!r}: folder {out_dir!r} does not exist")
    result = measure(args)
    data = (json.dumps(result, indent=2) + "\n").encode("utf-8")
    atomic_write(args.out, lambda f: f.write(data), what="matched-cost file")
    print(f"matched cost of {args.student} to {args.teacher} over {result['images']} images of "
          f"{result['dataset']} ({result['seconds']:.1f} s): "
          + ", ".join(f"{k} {v:.4f}" for k, v in result["costs"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
