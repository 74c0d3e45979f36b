"""Matching Guided Distillation (Yue, Deng, Zhou, ECCV 2020): the framework-free core.

Plain torch + scipy; no detection framework is imported here.

The public names below are imported on first use (PEP 562), so that the modules which need
neither torch nor SciPy (``mgd.cli``, ``mgd.overlay``, ``mgd.bootstrap``, ``mgd.errors``) start
in milliseconds: `make overlay` and every make target that refreshes the overlay run one of them.
"""
import importlib
from typing import Any

#: public name -> the submodule that defines it
_EXPORTS = {
    "margins_from_affine": "margins",
    "distillation_loss": "loss",
    "matching_cost": "matching",
    "solve_matching": "matching",
    "reduce_teacher": "reducers",
    "REDUCERS": "reducers",
    "MGDDistiller": "distiller",
    "DEFAULT_POSITION_NAMES": "defaults",
    "DEFAULT_IGNORE_INDS": "defaults",
    "DEFAULT_LOSS_FACTORS": "defaults",
    "DEFAULT_REDUCER": "defaults",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
