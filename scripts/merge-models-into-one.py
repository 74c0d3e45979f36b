#!/usr/bin/env python
"""The original MGD repository's name for ``python -m mgd_tools.merge_models``: the same arguments and output (a detector teacher and a converted student backbone in one file).

    python scripts/merge-models-into-one.py --help
"""
import sys

from mgd.cli import run_cli
from mgd_tools import merge_models


def main(argv=None):
    return merge_models.main(argv, prog="merge-models-into-one.py")


if __name__ == "__main__":
    sys.exit(run_cli(main))
