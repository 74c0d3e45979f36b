"""Split the student (or, with --eval-teacher, the teacher) out of an MGD checkpoint.

    python -m mgd_tools.convert_output IN.pth OUT.pkl [--eval-teacher]

(``make convert-all`` names the teacher's file ``X.teacher.pkl``, the student's ``X.pkl``.)

Keeps the ``s_net.*`` keys (``t_net.*`` with --eval-teacher) without the prefix, as numpy
arrays, in a Detectron2 pickle ``{"model": ..., "__author__": "TORCHVISION",
"matching_heuristics": True}`` that a plain RetinaNet config can use as ``MODEL.WEIGHTS``.
IN is read as data only; OUT is written atomically.
"""

import sys

from mgd.checkpoint import convert_distilled
from mgd.cli import OneLineArgumentParser, run_cli


def build_parser(prog: str = "python -m mgd_tools.convert_output"):
    p = OneLineArgumentParser(
        prog=prog,
        description="Extract the student (or teacher) of an MGD distillation checkpoint "
                    "into a Detectron2 pickle.")
    p.add_argument("input", metavar="IN", help="distillation checkpoint (e.g. output/model_final.pth)")
    p.add_argument("output", metavar="OUT", help="output pickle (.pkl)")
    p.add_argument("--eval-teacher", action="store_true",
                   help="extract the teacher (t_net.*) instead of the student (s_net.*)")
    return p


def main(argv=None, prog: str = "python -m mgd_tools.convert_output"):
    args = build_parser(prog).parse_args(argv)
    print(convert_distilled(args.input, args.output, args.eval_teacher))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
