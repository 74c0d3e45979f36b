"""The original's settings (COCO 1x; docs/mgd.md), defined once for the core and the config.

``mgd.config.add_mgd_config`` writes these into ``cfg.MGD``; ``MGDDistiller`` takes them as
its argument defaults.
"""
__all__ = [
    "DEFAULT_POSITION_NAMES",
    "DEFAULT_IGNORE_INDS",
    "DEFAULT_LOSS_FACTORS",
    "DEFAULT_REDUCER",
    "GN_GROUPS",
]

#: The distillation positions, in this order everywhere (backbone stages c2..c5, then FPN
#: levels p3..p7).
DEFAULT_POSITION_NAMES = ("c2", "c3", "c4", "c5", "p3", "p4", "p5", "p6", "p7")
#: Indices into DEFAULT_POSITION_NAMES not distilled: the FPN levels.
DEFAULT_IGNORE_INDS = (4, 5, 6, 7, 8)
#: Per-position divisors of the distillation loss (0 only where ignored).
DEFAULT_LOSS_FACTORS = tuple(f * 5e7 for f in (1.0, 1.0, 0.1, 0.1, 1.0, 1.0, 0.01, 0.0, 0.0))
#: The teacher-channel reducer: "amp" (absolute max pooling).
DEFAULT_REDUCER = "amp"
#: GroupNorm groups of the student norms; channel counts must be divisible by it.
GN_GROUPS = 32
