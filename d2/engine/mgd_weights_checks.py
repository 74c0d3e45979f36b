"""``MODEL.WEIGHTS`` checked against the run before anything is built or written.

:func:`check_weights` asks :mod:`mgd.checkpoint.strict` (through ``check_weights_for_config``)
whether the file exists and holds what the run's :class:`~mgd.checkpoint.Role` needs (teacher
and student for MGD training, the evaluated network's depth, ...; a ``CheckpointError``
otherwise); a run resumed from its own last checkpoint does not read ``MODEL.WEIGHTS``. For a
training, :func:`check_random_init_recipe` then refuses random-init weights (``make weights
RANDOM_INIT=1``) with a recipe that diverges or never trains from them (a frozen stem, no
gradient clipping), naming the config meant for them (:data:`RANDOM_INIT_CONFIGS`).
"""
import os

from detectron2.config import CfgNode
from detectron2.engine.mgd_checkpointer import check_weights_for_config
from detectron2.engine.mgd_config_file import ConfigError

from mgd.checkpoint import STUDENT_BACKBONE_PREFIX, Role, extract_state_dict, is_random_init, load_checkpoint_object
from mgd.config import is_mgd_config

__all__ = ["check_weights", "check_random_init_recipe", "RANDOM_INIT_CONFIGS"]


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
