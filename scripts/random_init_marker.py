#!/usr/bin/env python
"""Mark converted weights as random-init, or say whether a checkpoint carries the mark.

    python scripts/random_init_marker.py mark WEIGHTS.pkl    # add "__random_init__": True
    python scripts/random_init_marker.py show CHECKPOINT     # prints "random" or "pretrained"

`make weights RANDOM_INIT=1` marks the pickles it converts from random-init torchvision
ResNets (the pin's tools/convert-torchvision-to-d2.py cannot carry the mark), and `make
weights` reads the mark so random weights are never kept where ImageNet ones are asked
for. Runs that start from marked weights say so in one log line, and their checkpoints,
merges and splits keep the mark. Files are read as data only; `mark` rewrites atomically.
"""

import sys

from mgd.checkpoint import (
    CheckpointError,
    extract_state_dict,
    is_random_init,
    load_checkpoint_object,
    save_d2_pickle,
)
from mgd.cli import OneLineArgumentParser, run_cli


def build_parser():
    p = OneLineArgumentParser(
        prog="random_init_marker.py",
        description="Mark converted weights as random-init, or show whether a file is marked.")
    p.add_argument("action", choices=["mark", "show"])
    p.add_argument("path", metavar="CHECKPOINT")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    obj = load_checkpoint_object(args.path, what="weights")
    state = extract_state_dict(obj, args.path, what="weights")
    if args.action == "show":
        print("random" if is_random_init(obj) else "pretrained")
        return 0
    if not isinstance(obj.get("model"), dict) or "__author__" not in obj:
        raise CheckpointError(f"{args.path!r} is not a Detectron2 pickle ({{'model': ...}}); "
                              "mark the output of convert-torchvision-to-d2.py")
    save_d2_pickle(state, args.path, author=str(obj.get("__author__", "torchvision")),
                   random_init=True)
    print(f"marked {args.path} as random-init weights ({len(state)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
