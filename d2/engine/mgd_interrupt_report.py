"""The one line that ends a Ctrl-C of ``train_net.py``: what was saved, and how to go on.

During a training, :class:`~detectron2.engine.mgd_interrupt.InterruptGuard` saves the state
after the last finished iteration and names it in ``OUTPUT_DIR/last_checkpoint``. The entry
point takes :func:`checkpoint_state` before the launch; after the interrupt,
:func:`report_interrupt` lets a multi-process run's processes save and exit, then prints one
line on stderr (:func:`interrupted_line`): the checkpoint this run saved and the command that
resumes it (``mgd_output_dir.resume_command``), that nothing new was saved, that training ended
but its evaluation did not, or, for an evaluation or the probe, that nothing was written.
"""
import argparse
import multiprocessing
import os
import sys
import time
from typing import Optional, Tuple

from detectron2.config import CfgNode
from detectron2.engine.mgd_output_dir import resume_command
from detectron2.engine.mgd_setup import is_training, max_iterations

__all__ = ["checkpoint_state", "interrupted_line", "report_interrupt"]

#: (the name in last_checkpoint, that file's modification time in seconds), or (None, None)
CheckpointState = Tuple[Optional[str], Optional[float]]


def checkpoint_state(output_dir: str) -> CheckpointState:
    """(name in last_checkpoint, its modification time), to tell a checkpoint saved by this run."""
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            name = f.read().strip()
        return name, os.path.getmtime(os.path.join(output_dir, name))
    except OSError:
        return None, None


def _wait_for_processes(seconds: float = 60.0) -> None:
    """After Ctrl-C in a multi-process run: let the processes save and exit, then stop them."""
    deadline = time.monotonic() + seconds
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
    for child in multiprocessing.active_children():
        child.terminate()


def interrupted_line(cfg: CfgNode, args: argparse.Namespace, before: CheckpointState) -> str:
    """The one line that ends a Ctrl-C: what was saved and how to go on (``before``: the
    :func:`checkpoint_state` taken before the launch)."""
    if not is_training(args):
        return "interrupted: nothing was written"
    name, mtime = checkpoint_state(cfg.OUTPUT_DIR)
    saved = name is not None and (name, mtime) != before
    path = os.path.join(cfg.OUTPUT_DIR, name) if name else None
    if saved and name == "model_final.pth":
        return (f"interrupted after training ended: {path} is saved; its evaluation did not finish "
                "(run it with --eval-only, make eval)")
    if saved:
        step = name[len("model_"):-len(".pth")]
        done = (f" (the state after iteration {int(step)}, counted from 0: {int(step) + 1} of "
                f"{max_iterations(cfg, args)} done)") if step.isdigit() else ""
        return f"interrupted: saved {path}{done}; resume with: {resume_command()}"
    if name:
        return f"interrupted before an iteration finished: nothing new saved ({path} is the last); " \
               f"resume with: {resume_command()}"
    return "interrupted before the first iteration finished: nothing saved; run the same command to start again"


def report_interrupt(cfg: Optional[CfgNode], args: argparse.Namespace, before: Optional[CheckpointState]) -> None:
    """After Ctrl-C: wait for a multi-process run's processes, then print the one line on
    stderr (only "interrupted" when it came before the config was checked: ``cfg`` None)."""
    if args.num_gpus * args.num_machines > 1:
        _wait_for_processes()
    sys.stdout.flush()
    print(interrupted_line(cfg, args, before) if cfg is not None else "interrupted", file=sys.stderr)
