#!/usr/bin/env python
"""The original MGD repository's name for ``python -m mgd_tools.convert_output``: the same arguments and output (the student, or the teacher, of an MGD checkpoint as a Detectron2 pickle).

    python scripts/convert-output-to-d2.py --help
"""
import sys

from mgd.cli import run_cli
from mgd_tools import convert_output


def main(argv=None):
    return convert_output.main(argv, prog="convert-output-to-d2.py")


if __name__ == "__main__":
    sys.exit(run_cli(main))
