#!/usr/bin/env python
"""Save a randomly initialised torchvision ResNet state dict (offline stand-in for the
downloadable ImageNet weights), deterministically from a seed.

    python scripts/make_random_torchvision_weights.py --depth 18|34|50|101 OUT.pth [--seed N]

The file has the same keys as torchvision's released resnet*.pth files, so Detectron2's
tools/convert-torchvision-to-d2.py converts it exactly like a downloaded one; `make weights
RANDOM_INIT=1` then marks the converted pickle (scripts/random_init_marker.py), so it is never
taken for ImageNet weights. Written atomically (temporary file + rename).
"""

import sys

from mgd.checkpoint import atomic_write, check_output_path
from mgd.cli import OneLineArgumentParser, run_cli


def random_resnet_state_dict(depth, seed=0):
    """``torchvision.models.resnet{depth}(weights=None).state_dict()`` with a fixed seed."""
    import torch
    import torchvision

    builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
                50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = builders[depth](weights=None)
    finally:
        torch.random.set_rng_state(gen_state)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def build_parser():
    p = OneLineArgumentParser(
        prog="make_random_torchvision_weights.py",
        description="Write a random-init torchvision ResNet state dict (no download).")
    p.add_argument("--depth", type=int, choices=[18, 34, 50, 101], required=True)
    p.add_argument("output", metavar="OUT.pth")
    p.add_argument("--seed", type=int, default=0, help="torch seed for the init (default 0)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_output_path(args.output)
    import torch

    sd = random_resnet_state_dict(args.depth, args.seed)
    atomic_write(args.output, lambda f: torch.save(sd, f))
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {args.output}: torchvision resnet{args.depth}(weights=None), seed {args.seed}, "
          f"{len(sd)} tensors, {n / 1e6:.1f}M values")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
