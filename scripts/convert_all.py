#!/usr/bin/env python
"""Convert every ``*.pth`` checkpoint of an output folder to a Detectron2 ``.pkl``.

    python scripts/convert_all.py [OUTPUT_DIR] [--eval-teacher]     (default OUTPUT_DIR: output)

The loop of the original README, in one process: for each ``X.pth`` (sorted) it prints
``X.pth -> X.pkl`` and writes ``X.pkl`` as scripts/convert-output-to-d2.py would: the
student, or with --eval-teacher the teacher, to ``X.teacher.pkl`` (so the two never
overwrite each other; `make eval EVAL_TEACHER=1` reads ``model_final.teacher.pkl``). A file that fails is reported on one ``error:`` line and the
others are still converted; the exit code is 2 if any failed (or none was found).
"""

import os
import sys

from mgd.checkpoint import CheckpointError, convert_distilled
from mgd.cli import OneLineArgumentParser, report_error, run_cli


def build_parser():
    p = OneLineArgumentParser(
        prog="convert_all.py",
        description="Convert every *.pth in a folder with convert-output-to-d2.py's logic.")
    p.add_argument("output_dir", metavar="OUTPUT_DIR", nargs="?", default="output",
                   help="folder holding the distillation checkpoints (default: output)")
    p.add_argument("--eval-teacher", action="store_true",
                   help="extract the teacher (t_net.*) instead of the student (s_net.*)")
    return p


def converted_name(name: str, eval_teacher: bool = False) -> str:
    """``X.pth`` -> ``X.pkl`` (student) or ``X.teacher.pkl`` (teacher)."""
    return name[: -len(".pth")] + (".teacher.pkl" if eval_teacher else ".pkl")


def convert_all(output_dir, eval_teacher=False, out=sys.stdout, err=sys.stderr):
    """Returns the list of files that failed. Raises CheckpointError if nothing to do."""
    if not os.path.isdir(output_dir):
        what = "is not a folder" if os.path.exists(output_dir) else "does not exist"
        raise CheckpointError(f"output folder {output_dir!r} {what}; pass the training's "
                              "OUTPUT_DIR")
    names = sorted(n for n in os.listdir(output_dir)
                   if n.endswith(".pth") and os.path.isfile(os.path.join(output_dir, n)))
    if not names:
        raise CheckpointError(f"no *.pth checkpoints in {output_dir!r}; run the distillation "
                              "first or pass its OUTPUT_DIR")
    failed = []
    for name in names:
        new = converted_name(name, eval_teacher)
        print(f"{name} -> {new}", file=out, flush=True)
        try:
            summary = convert_distilled(os.path.join(output_dir, name),
                                        os.path.join(output_dir, new), eval_teacher)
            print(f"  {summary}", file=out, flush=True)
        except CheckpointError as exc:
            report_error(exc, file=err)
            failed.append(name)
    return failed


def main(argv=None):
    args = build_parser().parse_args(argv)
    failed = convert_all(args.output_dir, args.eval_teacher)
    if failed:
        raise CheckpointError(f"{len(failed)} checkpoint(s) failed to convert: {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
