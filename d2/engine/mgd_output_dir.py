"""A training's ``OUTPUT_DIR`` across runs: continued, started over, or finished already.

A training never restarts silently over an earlier run's checkpoints or metrics
(:func:`check_output_dir`): ``--resume`` continues it (:func:`checkpoint_iteration` reads where
from ``last_checkpoint``; :func:`finished_run` says when nothing is left to train), ``--fresh``
moves its files aside into ``<OUTPUT_DIR>-replaced-<date>/`` (:func:`move_previous_run`; nothing
is deleted). The messages name ``--resume``/``--fresh``, or ``RESUME=1``/``FRESH=1`` for a run
started by a make target (which sets :data:`RESUME_COMMAND_VARIABLE` to the command that
resumes it: :func:`resume_command`).
"""
import glob
import os
import shlex
import sys
import time
from typing import List, Optional, Tuple

from detectron2.config import CfgNode
from detectron2.engine.mgd_config_file import ConfigError

from mgd.checkpoint import CheckpointError, load_checkpoint_object

__all__ = ["check_output_dir", "previous_run_files", "move_previous_run", "checkpoint_iteration", "finished_run",
           "resume_command", "RESUME_COMMAND_VARIABLE"]

#: set by the make targets: the command that resumes this run (make ... RESUME=1)
RESUME_COMMAND_VARIABLE = "MGD_RESUME_COMMAND"
#: what a training run writes into OUTPUT_DIR that a second run would continue or mix with
_RUN_FILES = ("last_checkpoint", "model_*.pth", "metrics.json")


def previous_run_files(output_dir: str) -> List[str]:
    """The files of an earlier training run in ``output_dir`` (checkpoints, metrics)."""
    found = []
    for pattern in _RUN_FILES:
        found += sorted(glob.glob(os.path.join(glob.escape(output_dir), pattern)))
    return found


def _last_checkpoint(output_dir: str) -> Optional[str]:
    """The file name ``output_dir/last_checkpoint`` holds, or None."""
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
            "(train_net.py --eval-only); to train it again: FRESH=1 (--fresh); to train longer: "
            "a larger SOLVER.MAX_ITER")


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


def resume_command() -> str:
    """The command that continues this run: the make target's (RESUME=1), else this one with --resume."""
    made = os.environ.get(RESUME_COMMAND_VARIABLE)
    if made:
        return made
    argv = [word for word in sys.argv[1:] if word not in ("--resume", "--fresh")]
    return shlex.join(["python", sys.argv[0], "--resume", *argv])
