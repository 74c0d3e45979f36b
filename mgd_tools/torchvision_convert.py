"""Detectron2's torchvision converter (``tools/convert-torchvision-to-d2.py``) run as a command."""
import os
import subprocess
import sys

__all__ = ["ConversionFailed", "run_converter"]


class ConversionFailed(Exception):
    """The converter exited non-zero; ``str()`` is the last line it wrote to stderr."""


def run_converter(converter: str, pth: str, out: str) -> str:
    """Convert the torchvision checkpoint ``pth`` into Detectron2's ``out`` (.pkl); returns the
    converter's stdout (one ``a -> b`` line per tensor). On failure a partial ``out`` is removed
    and ConversionFailed raised."""
    proc = subprocess.run([sys.executable, converter, pth, out], capture_output=True, text=True)
    if proc.returncode != 0:
        if os.path.exists(out):
            os.remove(out)
        raise ConversionFailed((proc.stderr.strip().splitlines() or ["no output"])[-1])
    return proc.stdout
