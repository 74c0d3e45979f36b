#!/usr/bin/env python
"""Check a CUDA build of the pinned Detectron2 (made by `make check-cuda-build`); no GPU needed.

Usage: python scripts/check_cuda_build.py CHECKOUT

Checks that every ``.cu`` source under detectron2/layers/csrc has its compiled object in the
checkout's build/ tree, that ``detectron2._C`` of that checkout imports (in a fresh process, with
only that checkout on the path), and that ``_C.get_cuda_version()`` reports CUDA rather than
"not available". Prints the GPU architectures nvcc compiled for (from build.ninja). One
``error: ...`` line and exit status 1 when a check fails.
"""
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

CSRC = Path("detectron2/layers/csrc")


def uncompiled_cuda_sources(checkout: Path) -> List[str]:
    """The .cu files (relative to the checkout) with no object file under checkout/build."""
    sources = sorted((checkout / CSRC).rglob("*.cu"))
    if not sources:
        raise SystemExit(f"error: no .cu sources under {checkout / CSRC}; is {checkout} a Detectron2 checkout?")
    objects = {str(o) for o in (checkout / "build").rglob("*.o")}
    missing = []
    for source in sources:
        rel = source.relative_to(checkout).with_suffix(".o")
        if not any(o.endswith(os.sep + str(rel)) for o in objects):
            missing.append(str(source.relative_to(checkout)))
    return missing


def compiled_archs(checkout: Path) -> List[str]:
    """'sm_90', 'compute_90' (PTX), ... from the -gencode flags in the build's build.ninja."""
    archs = set()
    for ninja in (checkout / "build").rglob("build.ninja"):
        archs |= set(re.findall(r"-gencode[= ]arch=compute_\d+a?,code=((?:sm|compute)_\d+a?)", ninja.read_text()))
    return sorted(archs)


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    checkout = Path(argv[1]).resolve()
    n_cu = len(list((checkout / CSRC).rglob("*.cu")))
    missing = uncompiled_cuda_sources(checkout)
    if missing:
        print(f"error: {len(missing)} of {n_cu} .cu files were not compiled: {', '.join(missing)}", file=sys.stderr)
        return 1
    probe = "import torch; from detectron2 import _C; print(_C.__file__); print(_C.get_cuda_version())"
    env = dict(os.environ, PYTHONPATH=str(checkout))
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        print(f"error: detectron2._C of {checkout} does not import: {last}", file=sys.stderr)
        return 1
    module_file, cuda_version = result.stdout.strip().splitlines()[-2:]
    if not Path(module_file).resolve().is_relative_to(checkout):
        print(f"error: imported {module_file}, not the build in {checkout}", file=sys.stderr)
        return 1
    if not cuda_version.startswith("CUDA "):
        print(f"error: {module_file} reports CUDA '{cuda_version}': it was built without the CUDA ops", file=sys.stderr)
        return 1
    archs = compiled_archs(checkout)
    print(
        f"CUDA build OK: {n_cu}/{n_cu} .cu files compiled for {', '.join(archs) or 'unknown archs'}; "
        f"{Path(module_file).name} imports and reports {cuda_version}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
