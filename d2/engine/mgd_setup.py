"""From a command line to a checked config, before any log, output folder or model exists.

* :func:`load_config`: ``get_cfg()`` + the MGD keys + the config file + the overrides. A
  relative ``_BASE_`` that is missing next to the file is looked up in the Detectron2
  checkout's ``configs/COCO-Detection/`` (this repository's ``configs/*.yaml`` name
  ``../Base-RetinaNet.yaml``, as if they sat there), so they work where they are.
* :func:`check_config`: the MGD keys, the model's depths and norms, the matching schedule;
* :func:`check_weights`: ``MODEL.WEIGHTS`` is given where the run needs it and exists; weights
  made from random initialisation are trained only with a recipe that is stable from them;
* :func:`check_output_dir`: a training never restarts silently over a previous run's
  checkpoints (``--resume`` continues it, ``--fresh`` moves it aside: :func:`move_previous_run`);
* :func:`clamp_workers`: ``DATALOADER.NUM_WORKERS`` at most the cores per process.

Every problem raises :class:`ConfigError` with a one-line message (what is wrong, what to
do next); ``train_net.py`` prints it as ``error: ...``.
"""
import difflib
import glob
import json
import os
import re
import time
from typing import List, Optional, Tuple

import torch
import yaml

import detectron2
from detectron2.config import CfgNode, get_cfg
from detectron2.engine.mgd_checkpointer import check_weights_for_config
from detectron2.modeling.meta_arch.mgd_detector import AMP_PRECISIONS

from mgd.checkpoint import (DEPTH_LAYOUTS, STUDENT_BACKBONE_PREFIX, CheckpointError, Role, extract_state_dict,
                            is_random_init, load_checkpoint_object)
from mgd.config import (
    ASSIGNMENTS, MATCHING_DATA, MGD_META_ARCHITECTURE, add_mgd_config, detector_pair_problem, is_mgd_config,
)
from mgd.defaults import DEFAULT_POSITION_NAMES
from mgd.matching import MATCHING_RANKS
from mgd.errors import UserError
from mgd.reducers import REDUCERS
from mgd.schedule import MatchingSchedule

__all__ = ["ConfigError", "load_config", "check_config", "check_weights", "check_random_init_recipe",
           "check_output_dir", "checkpoint_iteration", "finished_run", "forget_logs_after", "move_previous_run", "previous_run_files", "clamp_workers",
           "fallback_config_dir", "NORMS", "RANDOM_INIT_CONFIGS"]

#: the names detectron2.layers.get_norm accepts at the pin
NORMS = ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN")
_DOWNLOADED = ("http://", "https://", "detectron2://", "catalog://")
_NOT_RELATIVE = ("/", "~") + _DOWNLOADED


class ConfigError(UserError, ValueError):
    """A config that cannot run as given; the message is one line (see mgd.errors)."""


def fallback_config_dir() -> str:
    """``configs/COCO-Detection`` of the Detectron2 checkout in use: where this repository's
    configs are meant to sit (their ``_BASE_`` is ``../Base-RetinaNet.yaml``)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(detectron2.__file__))),
                        "configs", "COCO-Detection")


class _TagTolerantLoader(yaml.SafeLoader):
    """Reads a config's structure without constructing Python-tagged values."""


_TagTolerantLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def _bases(path: str) -> List[str]:
    with open(path) as f:
        data = yaml.load(f, Loader=_TagTolerantLoader)
    base = data.get("_BASE_") if isinstance(data, dict) else None
    return [] if base is None else list(base) if isinstance(base, (list, tuple)) else [base]


def _base_path(path: str, base: str) -> str:
    """Where fvcore looks for ``base`` named in ``path``."""
    if base.startswith(_NOT_RELATIVE):
        return os.path.expanduser(base)
    return os.path.join(os.path.dirname(path), base)


def _resolves(path: str) -> bool:
    """Whether every ``_BASE_`` of ``path``, recursively, exists where fvcore looks for it."""
    return all(base.startswith(_DOWNLOADED)
               or (os.path.isfile(_base_path(path, base)) and _resolves(_base_path(path, base)))
               for base in _bases(path))


def _merge_file(cfg: CfgNode, path: str) -> None:
    """``cfg.merge_from_file(path)``, with missing relative ``_BASE_`` files taken from
    :func:`fallback_config_dir` (at any depth of the chain)."""
    if _resolves(path):
        cfg.merge_from_file(path)  # Detectron2's own loading (version upgrades included)
        return
    for base in _bases(path):
        resolved = _base_path(path, base)
        if not os.path.isfile(resolved) and not base.startswith(_NOT_RELATIVE):
            resolved = os.path.normpath(os.path.join(fallback_config_dir(), base))
            if not os.path.isfile(resolved):
                raise ConfigError(f"{path}: _BASE_ {base!r} not found next to it nor in {fallback_config_dir()}")
        _merge_file(cfg, resolved)
    with open(path) as f:
        data = yaml.unsafe_load(f)  # as Detectron2 reads configs (they may hold !!python tags)
    data.pop("_BASE_")
    cfg.merge_from_other_cfg(type(cfg)(data))


def _unknown_key_message(error: KeyError, cfg: CfgNode, where: str) -> str:
    text = str(error.args[0]) if error.args else str(error)
    key = text.split(":", 1)[1].strip() if ":" in text else text
    known = [k for k, _ in _flat_items(cfg)]
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown config key {key} {where}" + (f" (did you mean {close[0]}?)" if close else "")


def _flat_items(node: CfgNode, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, CfgNode):
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def load_config(config_file: str, opts: List[str]) -> CfgNode:
    """The full config (Detectron2 defaults, MGD keys, ``config_file``, then ``opts``)."""
    if not config_file:
        raise ConfigError("no config file given; pass --config-file FILE (e.g. configs/mgd_retinanet_R50_R18_FPN_1x.yaml)")
    if not os.path.isfile(config_file):
        raise ConfigError(f"config file {config_file} not found")
    cfg = add_mgd_config(get_cfg())
    try:
        _merge_file(cfg, config_file)
    except KeyError as error:
        raise ConfigError(_unknown_key_message(error, cfg, f"in {config_file}")) from None
    except (ValueError, AssertionError, yaml.YAMLError, OSError) as error:
        raise ConfigError(f"cannot load {config_file}: {' '.join(str(error).split())}") from None
    if len(opts) % 2:
        raise ConfigError(f"the KEY VALUE overrides must come in pairs; got {len(opts)} words: {' '.join(opts)}")
    try:
        cfg.merge_from_list(_whole_numbers_as_floats(cfg, list(opts)))
    except KeyError as error:
        raise ConfigError(_unknown_key_message(error, cfg, "on the command line")) from None
    except AssertionError as error:
        if str(error).startswith("Non-existent key"):  # fvcore's message for a key path not in cfg
            raise ConfigError(_unknown_key_message(KeyError(str(error)), cfg, "on the command line")) from None
        raise ConfigError(f"bad override on the command line: {' '.join(str(error).split())}") from None
    except ValueError as error:
        raise ConfigError(f"bad override on the command line: {' '.join(str(error).split())}") from None
    return cfg


def _whole_numbers_as_floats(cfg: CfgNode, opts: List[str]) -> List[str]:
    """The overrides with a whole number given for a float key written as a float
    (``MGD.LOSS_WEIGHT 0`` -> ``0.0``), which yacs would refuse as a type mismatch."""
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        node, *path = str(out[i]).split(".")
        default = cfg.get(node)
        for part in path:
            default = default.get(part) if isinstance(default, CfgNode) else None
        if isinstance(default, float) and re.fullmatch(r"[+-]?\d+", str(out[i + 1]).strip()):
            out[i + 1] = f"{int(out[i + 1])}.0"
    return out


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
        raise ConfigError("--eval-teacher needs --eval-only and an MGD config (MODEL.META_ARCHITECTURE MGDRetinaNet or MGDDetector)")
    if probe and not mgd:
        raise ConfigError("--probe-loss-factors needs an MGD config (MODEL.META_ARCHITECTURE MGDRetinaNet or MGDDetector)")
    _check_precision(cfg)
    if mgd:
        _check_mgd_keys(cfg)
    else:
        resnets = cfg.MODEL.RESNETS
        _check_net("MODEL.RESNETS", resnets.DEPTH, resnets.RES2_OUT_CHANNELS, resnets.NORM,
                   resnets.get("STAGE_LAST_NORM", ""))


def check_weights(cfg: CfgNode, eval_only: bool = False, eval_teacher: bool = False,
                  probe: bool = False, resume: bool = False) -> None:
    """``MODEL.WEIGHTS`` is given where the run needs trained weights, exists, and is a
    checkpoint of the kind the run expects: :mod:`mgd.checkpoint.strict` decides, for the
    run's :class:`~mgd.checkpoint.Role` (``check_weights_for_config``: teacher+student for MGD
    training, the evaluated network's depth, ...; raises its ``CheckpointError``)."""
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return  # the run continues from its own last checkpoint; MODEL.WEIGHTS is not read
    role = Role.of_run(mgd=is_mgd_config(cfg), eval_only=eval_only, eval_teacher=eval_teacher)
    check_weights_for_config(cfg, role)
    if role.training and not probe:
        check_random_init_recipe(cfg)


#: the configs that train from random-init weights (make ... RANDOM_INIT=1 picks them)
RANDOM_INIT_CONFIGS = {
    "base": "configs/retinanet_torchvision_R_{depth}_FPN_1x_random_init.yaml",
    "mgd": "configs/mgd_retinanet_R50_R18_FPN_1x_random_init.yaml",
}


def _starts_untrained(state: dict, prefix: str) -> bool:
    """Whether the ResNet under ``prefix`` holds the norm statistics of a fresh initialisation
    (every running mean 0, every running variance 1: torchvision's init, or 1 - 1e-5 for
    Detectron2's FrozenBN; pretrained nets never do). A merged teacher/student checkpoint is
    marked random-init when either net is: this tells whether the student is. A net without
    running statistics counts as untrained."""
    stats = [(k, v) for k, v in state.items() if k.startswith(prefix) and k.endswith(("running_mean", "running_var"))]
    for key, value in stats:
        target = 0.0 if key.endswith("running_mean") else 1.0
        try:
            if float(abs(value - target).max()) > 1e-4:
                return False
        except (TypeError, ValueError):
            return False
    return True


def check_random_init_recipe(cfg: CfgNode) -> None:
    """Refuse to train random-init weights (``make weights RANDOM_INIT=1``) with a recipe that
    is not meant for them: a frozen stem (``FREEZE_AT`` > 0: random filters that never learn)
    or no gradient clipping (the COCO configs from random init diverge to NaN within ~20
    iterations; every stable random-init run measured here clipped). Reads the mark (and, for
    a merged checkpoint, the student's norms) before anything runs."""
    weights = cfg.MODEL.WEIGHTS
    if not weights or not os.path.isfile(weights):
        return
    obj = load_checkpoint_object(weights, "MODEL.WEIGHTS")
    if not is_random_init(obj):
        return
    mgd = is_mgd_config(cfg)
    if mgd:
        state = extract_state_dict(obj, weights, "MODEL.WEIGHTS")
        if not _starts_untrained(state, STUDENT_BACKBONE_PREFIX):
            return  # the mark comes from the teacher; the student starts from trained weights
        freeze_key, freeze_at = "MGD.STUDENT.FREEZE_AT", cfg.MGD.STUDENT.FREEZE_AT
    else:
        freeze_key, freeze_at = "MODEL.BACKBONE.FREEZE_AT", cfg.MODEL.BACKBONE.FREEZE_AT
    problems = []
    if freeze_at > 0:
        problems.append(f"{freeze_key} {freeze_at} (random layers that never train)")
    if not cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        problems.append("no gradient clipping (the COCO recipe diverges to NaN from random init)")
    if not problems:
        return
    net = "the student's " if mgd else ""
    config = RANDOM_INIT_CONFIGS["mgd" if mgd else "base"].format(depth=cfg.MODEL.RESNETS.DEPTH)
    raise ConfigError(
        f"MODEL.WEIGHTS {weights} holds {net}random-init weights (make weights RANDOM_INIT=1), which this config "
        f"would train with {' and '.join(problems)}; from random init use the demo's recipe: make ... RANDOM_INIT=1 "
        f"(--config-file {config}: FREEZE_AT 0, GroupNorm in the last block of each stage, gradient clipping), "
        "or ImageNet weights (make weights)")


#: what a training run writes into OUTPUT_DIR that a second run would continue or mix with
_RUN_FILES = ("last_checkpoint", "model_*.pth", "metrics.json")


def previous_run_files(output_dir: str) -> List[str]:
    """The files of an earlier training run in ``output_dir`` (checkpoints, metrics)."""
    found = []
    for pattern in _RUN_FILES:
        found += sorted(glob.glob(os.path.join(glob.escape(output_dir), pattern)))
    return found


def _last_checkpoint(output_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def checkpoint_iteration(output_dir: str) -> Optional[Tuple[str, int]]:
    """(name, iteration) of the checkpoint ``output_dir/last_checkpoint`` names, or None. The
    iteration is read from the name (``model_0000085.pth``), or from the file for another name
    (None if it cannot be read: the resume itself reports what is wrong with the file)."""
    name = _last_checkpoint(output_dir)
    if not name:
        return None
    stem = name[len("model_"):-len(".pth")] if name.startswith("model_") and name.endswith(".pth") else ""
    if stem.isdigit():
        return name, int(stem)
    try:
        return name, int(load_checkpoint_object(os.path.join(output_dir, name), "checkpoint")["iteration"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None


def finished_run(cfg: CfgNode, max_iter: int) -> Optional[str]:
    """For ``--resume``: one line when ``OUTPUT_DIR``'s last checkpoint is of the run's last
    iteration (``max_iter - 1``, ``max_iter`` being ``SOLVER.MAX_ITER`` after the auto-scaling
    to the process count: nothing is left to train), else None."""
    found = checkpoint_iteration(cfg.OUTPUT_DIR)
    if found is None or found[1] < max_iter - 1:
        return None
    return (f"{cfg.OUTPUT_DIR} holds a finished run: {found[0]} is the state after iteration {found[1]} "
            f"(SOLVER.MAX_ITER {max_iter}); nothing to train. Its evaluation: make eval "
            "(train_net.py --eval-only); to train it again: FRESH=1 (--fresh); to train longer: a larger SOLVER.MAX_ITER")


#: the run's logs of one JSON object per line with an "iteration"
ITERATION_LOGS = ("metrics.json", "mgd_matching.json")


def forget_logs_after(output_dir: str, iteration: int) -> Optional[str]:
    """For ``--resume`` from the checkpoint of ``iteration``: remove from the run's JSON-lines
    logs (:data:`ITERATION_LOGS`) the lines of later iterations, which the resumed run repeats
    (an interrupted run logs past its last checkpoint), so each iteration is logged once.
    Files are rewritten atomically. Returns one line saying what was removed, or None."""
    removed = []
    for name in ITERATION_LOGS:
        path = os.path.join(output_dir, name)
        try:
            with open(path) as f:
                lines = f.read().splitlines(keepends=True)
        except OSError:
            continue
        kept = [line for line in lines if _logged_iteration(line) <= iteration]
        if len(kept) == len(lines):
            continue
        with open(path + ".part", "w") as f:
            f.writelines(kept)
        os.replace(path + ".part", path)
        removed.append(f"{len(lines) - len(kept)} of {name}")
    if not removed:
        return None
    return (f"--resume from the state after iteration {iteration}: the lines of later iterations, which this run "
            f"repeats, were removed ({', '.join(removed)})")


def _logged_iteration(line: str) -> float:
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return float("-inf")  # not a line of an iteration: kept


def check_output_dir(cfg: CfgNode, resume: bool, fresh: bool, via_make: bool = False) -> None:
    """A training into an ``OUTPUT_DIR`` that holds an earlier run's checkpoints or metrics
    needs ``--resume`` (continue it) or ``--fresh`` (start over; the old files are moved aside),
    never a silent restart from iteration 0. ``via_make``: name RESUME=1 / FRESH=1."""
    if resume and fresh:
        raise ConfigError("--resume and --fresh (make: RESUME=1, FRESH=1) exclude each other: "
                          "continue the run in OUTPUT_DIR, or start it over, not both")
    output_dir = cfg.OUTPUT_DIR
    if resume or fresh or not os.path.isdir(output_dir):
        return
    found = previous_run_files(output_dir)
    if not found:
        return
    again, resume_it, fresh_it = (("the same make command with ", "RESUME=1", "FRESH=1") if via_make
                                  else ("train_net.py ", "--resume", "--fresh"))
    moved = f"its files move to {os.path.normpath(output_dir)}-replaced-<date>/"
    checkpoints = [os.path.basename(f) for f in found if os.path.basename(f).startswith("model_")]
    last = _last_checkpoint(output_dir) or (checkpoints[-1] if checkpoints else None)
    if last:
        raise ConfigError(f"OUTPUT_DIR {output_dir} already holds a run (last checkpoint {last}); run {again}"
                          f"{resume_it} to continue it, or {fresh_it} to start over ({moved})")
    raise ConfigError(f"OUTPUT_DIR {output_dir} already holds a run (metrics.json, no checkpoint); run {again}"
                      f"{fresh_it} to start over ({moved}), or choose another OUTPUT_DIR")


def move_previous_run(output_dir: str) -> Optional[str]:
    """For ``--fresh``: move the earlier run out of ``output_dir`` (its files and Detectron2's
    ``inference/`` folder; other subfolders, e.g. other runs, stay) into a sibling folder
    ``<output_dir>-replaced-<date>``. Nothing is deleted. Returns that folder, or None when
    there was nothing to move."""
    if not os.path.isdir(output_dir):
        return None
    moved = [e for e in sorted(os.listdir(output_dir))
             if os.path.isfile(os.path.join(output_dir, e)) or e == "inference"]
    if not moved:
        return None
    base = f"{os.path.normpath(output_dir)}-replaced-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = base, 1
    while os.path.exists(target):
        n += 1
        target = f"{base}-{n}"
    os.makedirs(target)
    for entry in moved:
        os.rename(os.path.join(output_dir, entry), os.path.join(target, entry))
    return target


def clamp_workers(cfg: CfgNode, processes_per_machine: int) -> Optional[str]:
    """Lower ``DATALOADER.NUM_WORKERS`` to the cores each process has (the cores this process
    may use, divided among the machine's processes). Returns the line to log, or None."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = max(0, cores // max(1, processes_per_machine))
    asked = cfg.DATALOADER.NUM_WORKERS
    if asked <= limit:
        return None
    cfg.DATALOADER.NUM_WORKERS = limit
    return (f"DATALOADER.NUM_WORKERS {asked} lowered to {limit}: {cores} CPU cores for "
            f"{processes_per_machine} process(es) on this machine")

