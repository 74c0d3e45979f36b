"""Make the pinned Detectron2 importable for this repository's entry points.

``make detectron2`` builds Detectron2 in place in ``<repo>/detectron2`` without installing it.
From the repository root that folder alone would import as an empty namespace package
``detectron2``; :func:`use_pinned_detectron2` puts the checkout itself first on ``sys.path``
when no real Detectron2 is importable. No Detectron2 import happens here.
"""
import importlib.util
import os
import sys

__all__ = ["use_pinned_detectron2"]


def use_pinned_detectron2(repo_root: str) -> bool:
    """Put ``repo_root/detectron2`` (the built checkout) first on ``sys.path`` when Detectron2
    is not otherwise importable. Returns whether it did."""
    checkout = os.path.join(os.path.abspath(repo_root), "detectron2")
    spec = importlib.util.find_spec("detectron2")
    installed = spec is not None and spec.origin is not None  # not the bare checkout folder
    if installed or not os.path.isdir(os.path.join(checkout, "detectron2")):
        return False
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    return True
