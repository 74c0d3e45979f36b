#!/usr/bin/env python
"""Generate the synthetic COCO-format detection set of the CPU demo (deterministic).

    python scripts/make_synthetic_coco.py --out datasets/mgd_synth --seed 0 \
        [--train 320] [--val 120] [--size 128] [--min-object 10] [--max-object 56] \
        [--max-objects 4] [--max-distractors 4] [--min-visible 0.55]

Writes OUT/{train,val}/*.png, OUT/annotations/instances_{train,val}.json and
OUT/synthetic.json, atomically; an existing set written by this script is replaced. The data
design is described in mgd_tools/synthetic_coco.py. Use it as any COCO-format set:
train_net.py --dataset mgd_synth_train OUT/annotations/instances_train.json OUT/train (and val).
"""

import sys

from mgd.cli import OneLineArgumentParser, run_cli
from mgd_tools.synthetic_coco import SynthConfig, write_dataset


def build_parser():
    d = SynthConfig()
    p = OneLineArgumentParser(prog="make_synthetic_coco.py",
                              description="Write the synthetic COCO-format shapes dataset.")
    p.add_argument("--out", default="datasets/mgd_synth",
                   help="output folder (default: datasets/mgd_synth)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train", type=int, default=d.num_train, help="train images")
    p.add_argument("--val", type=int, default=d.num_val, help="val images")
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels")
    p.add_argument("--min-object", type=float, default=d.min_object,
                   help="smallest object size in px (log-uniform)")
    p.add_argument("--max-object", type=float, default=d.max_object,
                   help="largest object size in px (log-uniform)")
    p.add_argument("--max-objects", type=int, default=d.max_labelled,
                   help="labelled objects per image: 1..N")
    p.add_argument("--max-distractors", type=int, default=d.max_distractors,
                   help="unlabelled distractors per image: 1..N (0 for none)")
    p.add_argument("--min-visible", type=float, default=d.min_visible,
                   help="minimum visible fraction of each labelled object")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = SynthConfig(seed=args.seed, num_train=args.train, num_val=args.val, size=args.size,
                      min_object=args.min_object, max_object=args.max_object,
                      max_labelled=args.max_objects,
                      min_distractors=min(1, args.max_distractors),
                      max_distractors=args.max_distractors, min_visible=args.min_visible)
    info = write_dataset(args.out, cfg)  # a SyntheticDataError (a UserError) or Ctrl-C: run_cli
    (nt, at), (nv, av) = info["counts"]["train"], info["counts"]["val"]
    print(f"wrote {info['out']}: train {nt} images / {at} boxes, val {nv} images / {av} boxes, "
          f"{args.size}x{args.size}, 4 categories, seed {args.seed}, "
          f"{info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
