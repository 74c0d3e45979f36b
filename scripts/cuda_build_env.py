#!/usr/bin/env python
"""Decide how the pinned Detectron2's C++/CUDA ops are built; print the environment as shell exports.

Usage: eval "$(python scripts/cuda_build_env.py LINK_DIR)"    (used by scripts/get_detectron2.sh)

The choice:
  FORCE_CUDA=1   build the CUDA ops (also on a machine without a GPU, e.g. to prepare an image);
  FORCE_CUDA=0   CPU ops only, even where torch sees a GPU (RetinaNet runs on GPUs without them);
  unset          CUDA ops where ``torch.cuda.is_available()``, else CPU only.

For a CUDA build it finds a toolkit (CUDA_HOME, else the toolkit of ``which nvcc``, else
/usr/local/cuda), checks that nvcc's CUDA major version equals torch's, and fills what the
toolkit lacks from the ``nvidia`` pip wheels torch depends on: headers torch's own headers
include (cusparse.h, cublas_v2.h, ...) go on CPATH, and where no ``libcudart.so`` link name
exists, a symlink to the wheel's ``libcudart.so.<major>`` is made in LINK_DIR (a build-private
directory) and put on LIBRARY_PATH. TORCH_CUDA_ARCH_LIST is the user's, else the visible GPUs'
compute capabilities, else DEFAULT_ARCH_LIST.

Printed variables: MGD_BUILD_TARGET (one line saying what is built: "CPU only (why)" or
"CUDA 13.0 archs 9.0 + CPU ops (details)"; the part before " (" identifies the build) and, for CUDA builds,
FORCE_CUDA, CUDA_HOME, TORCH_CUDA_ARCH_LIST and, when needed, CPATH and LIBRARY_PATH.
A problem is one ``error: ...`` line on stderr and exit status 2.
"""
import shlex
import sys
from pathlib import Path
from typing import List

from mgd.cli import run_cli
from mgd_tools.cuda_build_env import build_env


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    env = build_env(Path(argv[1]).absolute())  # a BuildEnvError (a UserError): run_cli
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, sys.argv))
