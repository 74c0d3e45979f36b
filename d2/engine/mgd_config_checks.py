"""Refuse a config that would fail later or give a wrong answer, before anything runs.

:func:`check_config` checks what the run's mode needs (``--eval-teacher`` and the probe need an
MGD config), the AMP precision (and a GPU's bfloat16 support), and then either the MGD keys
(positions, loss factors and weight, the matching schedule and ranks, the assignment, the
teacher/student pairing, each network's ResNet depth and norms) or a plain network's ResNet.
Each problem raises :class:`~detectron2.engine.mgd_config_file.ConfigError` with one line.
"""
import torch

from detectron2.config import CfgNode
from detectron2.engine.mgd_config_file import ConfigError
from detectron2.modeling.meta_arch.mgd_detector import AMP_PRECISIONS

from mgd.checkpoint import DEPTH_LAYOUTS
from mgd.config import ASSIGNMENTS, MATCHING_DATA, MGD_META_ARCHITECTURE, detector_pair_problem, is_mgd_config
from mgd.defaults import DEFAULT_POSITION_NAMES
from mgd.matching import MATCHING_RANKS
from mgd.reducers import REDUCERS
from mgd.schedule import MatchingSchedule

__all__ = ["check_config", "NORMS"]

#: the names detectron2.layers.get_norm accepts at the pin
NORMS = ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN")
#: what --eval-teacher and --probe-loss-factors need
_MGD_CONFIG = "an MGD config (MODEL.META_ARCHITECTURE MGDRetinaNet or MGDDetector)"


def _check_net(where: str, depth: int, res2_out_channels: int, norm: str, stage_last_norm: str) -> None:
    if depth not in DEPTH_LAYOUTS:
        raise ConfigError(f"{where}.DEPTH {depth} is not a ResNet depth; use one of {sorted(DEPTH_LAYOUTS)}")
    if depth in (18, 34) and res2_out_channels != 64:
        raise ConfigError(f"{where}.RES2_OUT_CHANNELS must be 64 for R{depth}, got {res2_out_channels}")
    if norm not in NORMS:
        raise ConfigError(f"{where}.NORM {norm!r} is not a norm; use one of {', '.join(NORMS)}")
    if stage_last_norm and stage_last_norm not in NORMS:
        raise ConfigError(f"{where}.STAGE_LAST_NORM {stage_last_norm!r} is not a norm; use \"\" or one of "
                          f"{', '.join(NORMS)}")


def _check_mgd_keys(cfg: CfgNode) -> None:
    mgd = cfg.MGD
    names = list(DEFAULT_POSITION_NAMES)
    if mgd.REDUCER not in REDUCERS:
        raise ConfigError(f"MGD.REDUCER {mgd.REDUCER!r} is not a reducer; use one of {', '.join(REDUCERS)}")
    ignored = list(mgd.IGNORE_INDS)
    bad = [i for i in ignored if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(names)]
    if bad:
        raise ConfigError(f"MGD.IGNORE_INDS {ignored}: indices must be in 0..{len(names) - 1} "
                          f"(positions {', '.join(names)})")
    if set(ignored) >= set(range(len(names))):
        raise ConfigError(f"MGD.IGNORE_INDS {ignored} leaves no position to distil")
    factors = list(mgd.LOSS_FACTORS)
    if len(factors) != len(names):
        raise ConfigError(f"MGD.LOSS_FACTORS needs {len(names)} entries ({', '.join(names)}), got {len(factors)}")
    for i, name in enumerate(names):
        if i not in ignored and not (isinstance(factors[i], (int, float)) and factors[i] > 0):
            raise ConfigError(f"MGD.LOSS_FACTORS[{i}] ({name}) is {factors[i]!r} but {name} is distilled: "
                              f"it must be > 0 (or add {i} to MGD.IGNORE_INDS)")
    for role in ("TEACHER", "STUDENT"):
        net = mgd[role]
        _check_net(f"MGD.{role}", net.DEPTH, net.RES2_OUT_CHANNELS, net.NORM, net.STAGE_LAST_NORM)
    pairing = detector_pair_problem(cfg, "RetinaNet" if cfg.MODEL.META_ARCHITECTURE == MGD_META_ARCHITECTURE else None)
    if pairing:
        raise ConfigError(pairing)
    try:
        MatchingSchedule.from_config(cfg)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if mgd.UPDATE_ITER < 1:
        raise ConfigError(f"MGD.UPDATE_ITER must be >= 1 (batches per matching pass), got {mgd.UPDATE_ITER}")
    if mgd.REFERENCE_WORLD_SIZE < 0:
        raise ConfigError(f"MGD.REFERENCE_WORLD_SIZE must be >= 0, got {mgd.REFERENCE_WORLD_SIZE}")
    if mgd.MATCHING_RANKS not in MATCHING_RANKS:
        raise ConfigError(f"MGD.MATCHING_RANKS {mgd.MATCHING_RANKS!r}: use 'all' (every process's images) "
                          f"or 'rank0' (rank 0's alone, the original's rule)")
    weight = mgd.LOSS_WEIGHT
    if not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and 0 <= weight < float("inf")):
        raise ConfigError(f"MGD.LOSS_WEIGHT must be a finite number >= 0 (0: computed, not trained on), got {weight!r}")
    for key in ("DISTILL_UNTIL", "GRAD_NORM_PERIOD"):
        value = mgd[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"MGD.{key} must be a whole number >= 0 (0: off), got {value!r}")
    if mgd.ASSIGNMENT not in ASSIGNMENTS:
        raise ConfigError(f"MGD.ASSIGNMENT {mgd.ASSIGNMENT!r}: use 'matching' (solved on the schedule) or 'random' "
                          "(drawn once, never re-solved)")
    if mgd.MATCHING_DATA not in MATCHING_DATA:
        raise ConfigError(f"MGD.MATCHING_DATA {mgd.MATCHING_DATA!r}: use 'training' (the passes draw from the "
                          "training stream, the original's) or 'separate' (a stream of their own)")


def _check_precision(cfg: CfgNode) -> None:
    precision = cfg.SOLVER.AMP.PRECISION  # its default: mgd/config.py, once
    if precision not in AMP_PRECISIONS:
        raise ConfigError(f"SOLVER.AMP.PRECISION {precision!r}: use one of {', '.join(AMP_PRECISIONS)}")
    if (cfg.SOLVER.AMP.ENABLED and precision == "bfloat16" and cfg.MODEL.DEVICE.startswith("cuda")
            and torch.cuda.is_available() and not torch.cuda.is_bf16_supported()):
        raise ConfigError(f"SOLVER.AMP.PRECISION bfloat16: this GPU ({torch.cuda.get_device_name()}) has no "
                          "bfloat16 support; use float16 (or auto)")


def check_config(cfg: CfgNode, eval_only: bool = False, eval_teacher: bool = False,
                 probe: bool = False) -> None:
    """Refuse a config that would fail later or give a wrong answer: the mode's needs, the MGD
    keys, the networks' depths and norms, the matching schedule."""
    mgd = is_mgd_config(cfg)
    if eval_teacher and not (eval_only and mgd):
        raise ConfigError(f"--eval-teacher needs --eval-only and {_MGD_CONFIG}")
    if probe and not mgd:
        raise ConfigError(f"--probe-loss-factors needs {_MGD_CONFIG}")
    _check_precision(cfg)
    if mgd:
        _check_mgd_keys(cfg)
    else:
        resnets = cfg.MODEL.RESNETS
        _check_net("MODEL.RESNETS", resnets.DEPTH, resnets.RES2_OUT_CHANNELS, resnets.NORM,
                   resnets.get("STAGE_LAST_NORM", ""))
