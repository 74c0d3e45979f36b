"""The loss-factor probe: each distilled position's loss as training will see it, and the
``MGD.LOSS_FACTORS`` that would put each at a target.

Training divides each position's summed loss by its factor (in the distiller) and by
``distillation_divisor(IMS_PER_BATCH, MGD.REFERENCE_WORLD_SIZE, world_size)`` (in
``MGDRetinaNet.forward``, ``model.loss_divisor``). The probe divides by the same two, so a
suggested factor ``f * loss / target`` gives a training loss of ``target`` for that position.
"""
import json
import logging
import os
from typing import Dict, List, Optional

import torch

from detectron2.data import build_detection_train_loader
from detectron2.engine.mgd_checkpointer import MGDCheckpointer
from detectron2.engine.mgd_matching_pass import run_matching_pass
from detectron2.modeling import build_model
from detectron2.utils import comm

from mgd.config import is_mgd_config

__all__ = ["probe_loss_factors", "suggest_factors"]


def suggest_factors(factors: List[float], losses: Dict[str, float], names: List[str],
                    target: float) -> List[float]:
    """Factors that scale each probed loss to ``target``: ``f * loss / target``.

    Args:
        factors: the nine current ``MGD.LOSS_FACTORS``.
        losses: {position name: loss after its factor and the divisor}, distilled positions only.
        names: the nine position names, in factor order.
        target: the wanted per-position loss.
    Returns:
        nine factors; a position not probed, or with a zero loss, keeps its factor.
    """
    suggested = list(factors)
    for name, value in losses.items():
        i = names.index(name)
        if value > 0:
            suggested[i] = factors[i] * value / target
    return suggested


@torch.no_grad()
def probe_loss_factors(cfg, target: float = 0.02, iters: int = 1, matching_batches: int = 20,
                       output: Optional[str] = None) -> dict:
    """Margins and a matching pass over ``matching_batches`` batches, then each position's
    loss (after its factor and the distillation divisor) averaged over ``iters`` batches.

    Args:
        cfg: a frozen MGD config; ``MODEL.WEIGHTS`` the merged teacher/student checkpoint.
        target: the per-position loss the suggested factors aim at.
        iters: batches the losses are averaged over.
        matching_batches: batches of the matching pass.
        output: where to also write the suggested override line ("" or None: nowhere).
    Returns:
        {"losses": {position: loss}, "suggested": nine factors, "divisor": the divisor}.
    """
    if not is_mgd_config(cfg):
        raise ValueError("the loss-factor probe needs an MGD config (MODEL.META_ARCHITECTURE MGDRetinaNet or MGDDetector)")
    logger = logging.getLogger("detectron2")
    model = build_model(cfg)
    divisor = model.loss_divisor  # the one training divides by (mgd.config.distillation_divisor)
    MGDCheckpointer(model, cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    data = iter(build_detection_train_loader(cfg))
    model.eval()
    model.update_margins()
    run_matching_pass(model, data, matching_batches, label="MGD loss-factor probe's matching pass")
    sums: Dict[str, float] = {}
    for _ in range(iters):
        for name, value in model.distillation_losses(next(data)).items():
            sums[name] = sums.get(name, 0.0) + value.item() / divisor
    losses = {name: value / iters for name, value in sums.items()}

    names = list(model.position_names)
    factors = list(cfg.MGD.LOSS_FACTORS)
    suggested = suggest_factors(factors, losses, names, target)
    lines = [f"{'position':<9}{'factor':>12}{'loss/(factor*divisor)':>24}{'suggested factor':>18}"]
    for name, value in losses.items():
        i = names.index(name)
        lines.append(f"{name:<9}{factors[i]:>12.4g}{value:>24.5g}{suggested[i]:>18.4g}")
    override = "MGD.LOSS_FACTORS " + json.dumps([float(f"{f:.4g}") for f in suggested]).replace(" ", "")
    if cfg.MGD.REFERENCE_WORLD_SIZE:
        rule = (f"IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} x MGD.REFERENCE_WORLD_SIZE "
                f"{cfg.MGD.REFERENCE_WORLD_SIZE} / {comm.get_world_size()} processes")
    else:
        rule = f"IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH}, MGD.REFERENCE_WORLD_SIZE 0"
    logger.info(
        f"MGD loss-factor probe, distillation divisor {divisor:g} ({rule}):\n"
        + "\n".join(lines) + f"\nsuggested (each position at ~{target}):\n  {override}"
    )
    if output and comm.is_main_process():
        partial = output + ".part"
        with open(partial, "w") as f:
            f.write(override + "\n")
        os.replace(partial, output)
    return {"losses": losses, "suggested": suggested, "divisor": divisor}
