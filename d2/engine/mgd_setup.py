"""From ``train_net.py``'s command line to a checked run, then each process's setup.

In order: :func:`check_run` makes every check that can be made before anything is logged or
written (the overrides, the config, the datasets and their images, ``MODEL.WEIGHTS``, the
output folder; a problem raises a one-line ``mgd.errors.UserError``); :func:`prepare_output_dir`
acts on ``--resume`` (a finished run ends here; later log lines are cut) and ``--fresh`` (the
earlier run is moved aside) before the launch; in each launched process, :func:`setup_run`
builds the same config (:func:`setup_config`: the file, the overrides, ``--scale``'s sizes,
workers clamped to the cores by :func:`clamp_workers`), keeps an earlier evaluation, and runs
Detectron2's ``default_setup`` (logs, ``OUTPUT_DIR/config.yaml``).
"""
import argparse
import logging
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch

import detectron2
from detectron2.config import CfgNode
from detectron2.data.mgd_datasets import check_datasets, register_coco_dataset
from detectron2.engine.defaults import default_setup
from detectron2.engine.mgd_config_checks import check_config
from detectron2.engine.mgd_config_file import ConfigError, load_config
from detectron2.engine.mgd_console import quiet_console
from detectron2.engine.mgd_output_dir import (RESUME_COMMAND_VARIABLE, check_output_dir, checkpoint_iteration,
                                              finished_run, move_previous_run)
from detectron2.engine.mgd_results import keep_earlier_evaluation
from detectron2.engine.mgd_resume_logs import forget_logs_after
from detectron2.engine.mgd_scale import apply_scale, parse_scale, record_scale
from detectron2.engine.mgd_trainer import scale_to_world_size
from detectron2.engine.mgd_weights_checks import check_weights
from detectron2.utils import comm

from mgd.bootstrap import describe_detectron2

__all__ = ["check_run", "prepare_output_dir", "setup_run", "setup_config", "check_overrides", "clamp_workers",
           "is_training", "max_iterations"]


def is_training(args: argparse.Namespace) -> bool:
    """Whether the command trains (not ``--eval-only``, not ``--probe-loss-factors``)."""
    return not (args.eval_only or args.probe_loss_factors)


def max_iterations(cfg: CfgNode, args: argparse.Namespace) -> int:
    """SOLVER.MAX_ITER as the trainer runs it (after the auto-scaling to the process count)."""
    return scale_to_world_size(cfg, args.num_gpus * args.num_machines).SOLVER.MAX_ITER


def check_overrides(opts: List[str]) -> None:
    """Flags among the KEY VALUE overrides (argparse puts everything after the first override
    there; make's OPTS lands there too) are a mistake to name, not an odd number of words. The
    one home of this rule: the make targets pass OPTS through unchecked."""
    flags = [str(word) for word in opts if str(word).startswith("--")]
    if not flags:
        return
    make_names = {"--resume": "RESUME=1", "--fresh": "FRESH=1", "--scale": "SCALE=..."}
    with_make = [f"{make_names[f]} for {f}" for f in flags if f in make_names]
    others = [f for f in flags if f not in make_names]
    if others:
        with_make.append(f"LAUNCH_ARGS=\"{' '.join(others)}\" for {', '.join(others)}")
    raise ConfigError(f"{' '.join(flags)} among the KEY VALUE config overrides, where flags are not read: put them "
                      f"before the overrides (train_net.py {flags[0]} --config-file FILE KEY VALUE ...); with make, "
                      f"OPTS takes overrides only: {'; '.join(with_make)}")


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


def setup_config(args: argparse.Namespace, parsed: Optional[Dict[str, dict]] = None) -> Tuple[CfgNode, List[str]]:
    """The frozen config of this run (the file, the overrides, ``--scale``'s sizes, workers
    clamped to the cores), with the --dataset sets registered in this process (``parsed``: a
    dict to leave their parsed JSON in, for ``check_datasets``), and the lines that say what
    was adjusted (logged once the log is set up)."""
    check_overrides(args.opts)
    args.scale = parse_scale(args.scale)
    progress = (lambda line: print(line, flush=True)) if parsed is not None else None
    for name, json_file, image_root in args.dataset or ():
        register_coco_dataset(name, json_file, image_root, parsed=parsed, progress=progress)
    cfg = load_config(args.config_file, args.opts)
    notes = [apply_scale(cfg, args.scale, explicit=[str(k) for k in args.opts[0::2]]),
             clamp_workers(cfg, args.num_gpus)]
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"  # no GPU here: run on CPU (multi-process runs use gloo)
    if args.probe_loss_factors and "OUTPUT_DIR" not in args.opts[::2]:
        cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "probe")  # its config.yaml and log.txt
    cfg.freeze()
    return cfg, [note for note in notes if note]


def check_run(args: argparse.Namespace) -> CfgNode:
    """Every check that can be made before the run starts (raises a mgd.errors.UserError); then
    one line per dataset checked, and one warning line per dataset with something Detectron2
    drops or clips. Returns the config."""
    parsed = {}
    cfg, _ = setup_config(args, parsed)
    mode = dict(eval_only=args.eval_only, eval_teacher=args.eval_teacher, probe=args.probe_loss_factors)
    check_config(cfg, **mode)
    # training also evaluates on DATASETS.TEST at its end; the probe reads DATASETS.TRAIN only
    checks = check_datasets(cfg, train=not args.eval_only, test=not args.probe_loss_factors,
                            all_sizes=args.check_all_images, parsed=parsed,
                            progress=lambda line: print(line, flush=True))
    del parsed
    check_weights(cfg, **mode, resume=args.resume)
    if is_training(args):
        check_output_dir(cfg, args.resume, args.fresh, via_make=bool(os.environ.get(RESUME_COMMAND_VARIABLE)))
    for check in checks:
        print(check.summary(), flush=True)
        if check.warnings:
            print(f"warning: dataset {check.name!r}: {'; '.join(check.warnings)}", file=sys.stderr, flush=True)
    return cfg


def prepare_output_dir(cfg: CfgNode, args: argparse.Namespace) -> bool:
    """Before a training is launched: ``--resume`` of a finished run prints so and returns False
    (nothing to launch); else, on the first machine, ``--resume`` cuts the logs back to the
    checkpoint it continues from and ``--fresh`` moves the earlier run aside, each said in one
    line. Returns True when the run is to be launched."""
    if not is_training(args):
        return True
    if args.resume:
        finished = finished_run(cfg, max_iterations(cfg, args))
        if finished:
            print(finished, flush=True)
            return False
        resumed_from = checkpoint_iteration(cfg.OUTPUT_DIR)
        if resumed_from and args.machine_rank == 0:
            forgotten = forget_logs_after(cfg.OUTPUT_DIR, resumed_from[1])
            if forgotten:
                print(forgotten, flush=True)
    if args.fresh and args.machine_rank == 0:
        moved = move_previous_run(cfg.OUTPUT_DIR)
        if moved:
            print(f"--fresh: the earlier run's files in {cfg.OUTPUT_DIR} moved to {moved}/")
    return True


def setup_run(args: argparse.Namespace, repo_root: str) -> CfgNode:
    """One launched process's setup: the config (:func:`setup_config`), an earlier evaluation's
    files kept (``--eval-only``), a quiet console, Detectron2's ``default_setup`` (logs, the
    final config in ``OUTPUT_DIR/config.yaml``, headed by the ``--scale``), then the log lines
    saying which Detectron2 runs (``repo_root``: this repository) and what was adjusted."""
    cfg, notes = setup_config(args)
    if args.eval_only and comm.is_main_process():  # nothing of an earlier evaluation is overwritten
        kept = keep_earlier_evaluation(cfg.OUTPUT_DIR, replace=args.replace_eval)
        if kept:
            print(kept, flush=True)
    quiet_console(cfg.OUTPUT_DIR, comm.get_rank())  # long listings to log.txt only
    default_setup(cfg, args)  # logs, and saves the final config to OUTPUT_DIR/config.yaml
    if comm.is_main_process():
        record_scale(cfg.OUTPUT_DIR, args.scale)
    logger = logging.getLogger("detectron2")
    logger.info(describe_detectron2(repo_root, os.path.dirname(detectron2.__file__)))
    for note in notes:
        logger.info(note)
    if is_training(args) and args.resume and not os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        logger.info(f"--resume: no checkpoint in {cfg.OUTPUT_DIR} yet; starting from MODEL.WEIGHTS at iteration 0")
    return cfg
