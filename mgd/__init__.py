"""Matching Guided Distillation (Yue, Deng, Zhou, ECCV 2020): the framework-free core.

Plain torch + scipy; no detection framework is imported here.
"""
from .defaults import DEFAULT_IGNORE_INDS, DEFAULT_LOSS_FACTORS, DEFAULT_POSITION_NAMES, DEFAULT_REDUCER
from .distiller import MGDDistiller
from .loss import distillation_loss
from .margins import margins_from_affine
from .matching import matching_cost, solve_matching
from .reducers import REDUCERS, reduce_teacher

__all__ = [
    "margins_from_affine",
    "distillation_loss",
    "matching_cost",
    "solve_matching",
    "reduce_teacher",
    "REDUCERS",
    "MGDDistiller",
    "DEFAULT_POSITION_NAMES",
    "DEFAULT_IGNORE_INDS",
    "DEFAULT_LOSS_FACTORS",
    "DEFAULT_REDUCER",
]
