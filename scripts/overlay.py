#!/usr/bin/env python
"""Copy the overlay into a Detectron2 checkout: d2/X/y.py -> CHECKOUT/detectron2/X/y.py and
configs/*.yaml -> CHECKOUT/configs/COCO-Detection/ (only files that differ; idempotent).

    python scripts/overlay.py detectron2    # what `make overlay` runs

Every entry point that imports the overlay refreshes a stale copy by itself
(mgd/overlay.py); this is the explicit step, one line per file copied and a summary.
"""
import os
import sys

from mgd.cli import OneLineArgumentParser, run_cli
from mgd.overlay import OverlayError, copy_overlay, overlay_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = OneLineArgumentParser(prog="overlay.py", description=__doc__.splitlines()[0])
    p.add_argument("checkout", help="the Detectron2 checkout (the folder holding detectron2/)")
    p.add_argument("--make-hint", default="make detectron2",
                   help="the command that builds the checkout, named when it is missing")
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.checkout, "detectron2")):
        raise OverlayError(f"{args.checkout} is missing; run '{args.make_hint}' first")
    copied = copy_overlay(REPO_ROOT, args.checkout)
    for src, dst in copied:
        print(f"copied {os.path.relpath(src, REPO_ROOT)} -> {os.path.relpath(dst.parent)}/")
    total = len(overlay_files(REPO_ROOT, args.checkout))
    print(f"overlay: {len(copied)} files copied, the rest already up to date ({total} in all)")


if __name__ == "__main__":
    sys.exit(run_cli(main))
