#!/usr/bin/env python
"""Pretrain a torchvision ResNet on the generated classification task and convert it for Detectron2.

    python scripts/pretrain_backbone.py --depth 18|50 --out weights/study/r-18.pkl
        [--steps 300] [--batch 32] [--size 48] [--lr 0.1] [--seed 0] [--checkout detectron2]

The study's stand-in for ImageNet weights (mgd_tools/pretrain.py says what the task is). Writes
OUT (Detectron2's pickle, converted by the checkout's tools/convert-torchvision-to-d2.py, as
`make weights` converts torchvision's files), OUT without .pkl + .pth (the torchvision state
dict) and + .json (the settings, the held-out accuracy and the time). Files are written
atomically; an existing OUT is kept.
"""
import json
import os
import sys

from mgd.checkpoint import atomic_write
from mgd.cli import OneLineArgumentParser, run_cli
from mgd.errors import UserError
from mgd_tools.torchvision_convert import ConversionFailed, run_converter


def convert(checkout: str, pth: str, pkl: str) -> None:
    """The checkout's torchvision converter, into a temporary file renamed to ``pkl``."""
    converter = os.path.join(checkout, "tools", "convert-torchvision-to-d2.py")
    if not os.path.isfile(converter):
        raise UserError(f"{converter} not found; run `make detectron2` first")
    part = pkl + ".part"
    try:
        run_converter(converter, pth, part)
    except ConversionFailed as failure:
        raise UserError(f"converting {pth} failed: {failure}") from None
    os.replace(part, pkl)


def main(argv=None) -> int:
    p = OneLineArgumentParser(prog="pretrain_backbone.py", description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, choices=[18, 34, 50, 101], required=True)
    p.add_argument("--out", required=True, metavar="OUT.pkl")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkout", default=os.environ.get("MGD_DETECTRON2_DIR", "detectron2"))
    args = p.parse_args(argv)
    if not args.out.endswith(".pkl"):
        raise UserError(f"--out must name a .pkl file, got {args.out}")
    if os.path.exists(args.out):
        print(f"{args.out} exists, kept")
        return 0
    import torch

    from mgd_tools.pretrain import PretrainConfig, pretrain_resnet

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    cfg = PretrainConfig(depth=args.depth, steps=args.steps, batch=args.batch, size=args.size, lr=args.lr,
                         seed=args.seed)
    state, summary = pretrain_resnet(cfg, progress=lambda line: print(line, flush=True))
    stem = args.out[:-len(".pkl")]
    atomic_write(stem + ".pth", lambda f: torch.save(state, f))
    atomic_write(stem + ".json", lambda f: f.write(json.dumps(summary, indent=1).encode()))
    convert(args.checkout, stem + ".pth", args.out)
    print(f"R{args.depth} pretrained on the generated classification task: held-out accuracy "
          f"{summary['held_out_accuracy']:.3f} after {cfg.steps} steps of {cfg.batch} ({summary['seconds']:.0f} s) "
          f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
