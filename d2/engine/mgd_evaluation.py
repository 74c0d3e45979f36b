"""``train_net.py --eval-only``: COCO AP of one network, saved with what was evaluated.

:func:`evaluate` builds the network (:func:`build_eval_model`: for an MGD config the student's,
or with ``--eval-teacher`` the teacher's, RetinaNet), loads ``MODEL.WEIGHTS`` strictly (a whole
distillation checkpoint has its ``s_net.``/``t_net.`` prefix stripped; ``--resume`` takes the
output folder's last checkpoint), runs Detectron2's COCO evaluation on ``DATASETS.TEST`` and
writes ``OUTPUT_DIR/eval_results.json`` through :mod:`~detectron2.engine.mgd_results` (strict
JSON, with its provenance). A log warning says when the weights' training run used other test
sizes (:func:`training_sizes_differ`).
"""
import argparse
import logging
import os
from typing import Optional, Tuple

import torch
import yaml

from detectron2.config import CfgNode
from detectron2.data.mgd_datasets import dataset_sizes
from detectron2.engine.mgd_checkpointer import MGDCheckpointer
from detectron2.engine.mgd_results import provenance, report_empty, save_results
from detectron2.engine.mgd_trainer import MGDTrainer
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from mgd.checkpoint import Role
from mgd.config import derive_net_config, is_mgd_config

__all__ = ["evaluate", "build_eval_model", "training_sizes_differ"]


def build_eval_model(cfg: CfgNode, eval_teacher: bool = False) -> Tuple[torch.nn.Module, Role]:
    """The network to evaluate: for an MGD config, the student's (or teacher's) RetinaNet.

    MODEL.WEIGHTS may be a split checkpoint (scripts/convert-output-to-d2.py) or a whole
    distillation checkpoint: its s_net./t_net. prefix (Role.prefix) is stripped. Returns (model, role).
    """
    role = Role.of_run(mgd=is_mgd_config(cfg), eval_only=True, eval_teacher=eval_teacher)
    if role.mgd:
        cfg = derive_net_config(cfg, role.value)
        logging.getLogger("detectron2").info(f"Evaluating the {role.value} of the MGD config")
    return MGDTrainer.build_model(cfg), role


def training_sizes_differ(cfg: CfgNode) -> Optional[str]:
    """One line when MODEL.WEIGHTS sits next to its training run's config.yaml and that run
    used other test sizes than this evaluation (e.g. trained with SCALE=data, evaluated
    without); None otherwise."""
    path = os.path.join(os.path.dirname(os.path.abspath(cfg.MODEL.WEIGHTS)), "config.yaml")
    try:
        with open(path) as f:
            trained = yaml.safe_load(f)["INPUT"]
        then = (int(trained["MIN_SIZE_TEST"]), int(trained["MAX_SIZE_TEST"]))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
    now = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    if then == now:
        return None
    return (f"the training run of {cfg.MODEL.WEIGHTS} evaluated at INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST "
            f"{then[0]}/{then[1]} ({path}), this evaluation at {now[0]}/{now[1]}: pass the training's SCALE "
            "(train_net.py --scale) to compare like with like")


def evaluate(cfg: CfgNode, args: argparse.Namespace, code_dir: str) -> dict:
    """Evaluate the network ``args`` names (``--eval-teacher``, ``--resume``) on DATASETS.TEST;
    the main process writes ``eval_results.json`` with the provenance (``code_dir``: this
    repository, whose commit is recorded). Returns Detectron2's results ({dataset: {task: {metric: value}}})."""
    differ = training_sizes_differ(cfg)
    if differ:
        logging.getLogger("detectron2").warning(differ)
    model, role = build_eval_model(cfg, args.eval_teacher)  # strict: no re-init at evaluation
    checkpointer = MGDCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strip_prefix=role.prefix, role=role)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    resumed = args.resume and checkpointer.has_checkpoint()  # then OUTPUT_DIR's last checkpoint was loaded
    weights = checkpointer.get_checkpoint_file() if resumed else cfg.MODEL.WEIGHTS
    results = MGDTrainer.test(cfg, model)
    if comm.is_main_process():
        report_empty(results, list(cfg.DATASETS.TEST), cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
        verify_results(cfg, results)
        network = role.value  # "teacher", "student" or "retinanet"
        about = provenance(weights, args.config_file, args.opts, [dataset_sizes(n) for n in cfg.DATASETS.TEST],
                           code_dir=code_dir, network=network)
        save_results(results, os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), about)
    return results
