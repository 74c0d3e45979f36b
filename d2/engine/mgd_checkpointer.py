"""Checkpoints for MGD runs: read as data, loaded strictly where a mismatch means a wrong answer.

``MGDCheckpointer`` is Detectron2's ``DetectionCheckpointer`` with:

* files read as data (restricted unpickling of ``.pkl``, ``torch.load(weights_only=True)``
  for ``.pth``; :mod:`mgd.checkpoint`), one-line :class:`CheckpointError` for bad files;
* an optional key prefix stripped (``s_net.``/``t_net.``: evaluating one net of a
  distillation checkpoint);
* the rules of :mod:`mgd.checkpoint.strict` applied before the weights are copied: a
  tensor whose shape differs from the model's, a teacher where a student is expected (or
  the reverse), an incomplete teacher (MGD training) or evaluated network is refused; a
  training that fine-tunes on another label set re-initialises the classifier
  (``head.cls_score``) with one log line;
* weights made from random initialisation (``__random_init__`` in the file, written by
  ``make weights RANDOM_INIT=1``) announced in one log line, and the mark carried into the
  checkpoints this run saves;
* checkpoints saved atomically (a temporary file in the folder, renamed into place; the same
  for ``last_checkpoint``): a run stopped while saving leaves the previous files intact.

:func:`check_weights_for_config` makes the same kind/depth/class checks from the config
alone, before any model is built or anything is logged.
"""
import logging
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

from mgd.checkpoint import (
    RANDOM_INIT_KEY,
    ROLES,
    CheckpointError,
    atomic_write,
    check_checkpoint_role,
    extract_state_dict,
    is_random_init,
    load_checkpoint_object,
    plan_load,
    resnet_depth,
    shapes_of,
    strip_prefix,
)
from mgd.config import is_mgd_config

__all__ = ["MGDCheckpointer", "check_weights_for_config", "strip_prefix", "ROLES"]

logger = logging.getLogger("detectron2.mgd")

_PREFIX_ROLES = {"t_net.": "eval-teacher", "s_net.": "eval-student"}
_MISSING_HINTS = {
    "train": "make weights, make base and make merge write the usual inputs",
    "eval-student": "make convert-all writes MGD_OUTPUT/model_final.pkl",
    "eval-teacher": "make convert-all EVAL_TEACHER=1 writes MGD_OUTPUT/model_final.teacher.pkl",
}


def _random_init_line(path: str) -> str:
    return (f"MODEL.WEIGHTS {path} holds RANDOMLY INITIALISED weights (make weights "
            "RANDOM_INIT=1), not ImageNet-pretrained ones: results are not comparable with "
            "ImageNet-initialised runs")


class MGDCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads checkpoints as data and loads them strictly.

    Args:
        strip_prefix: keep only the keys with this prefix, without it ("s_net." / "t_net.").
        role: "train", "eval-student" or "eval-teacher"; by default "eval-teacher" for
            ``strip_prefix="t_net."``, "eval-student" for "s_net.", else "train". Pass
            "eval-student" to evaluate a plain RetinaNet.
    """

    def __init__(self, model, save_dir="", *, strip_prefix: str = "", role: str = "", **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strip_prefix = strip_prefix
        self.role = role or _PREFIX_ROLES.get(strip_prefix, "train")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        self.random_init = False
        self._path = ""

    def load(self, path, checkpointables=None):
        if path and "://" not in path and not os.path.isfile(path):  # fvcore would assert
            raise CheckpointError(f"MODEL.WEIGHTS {path!r} does not exist; check the path "
                                  f"({_MISSING_HINTS[self.role]})")
        self._path = path
        return super().load(path, checkpointables)

    def save(self, name, **kwargs):
        """fvcore's ``save`` (model, checkpointables, extra data into ``save_dir/name.pth``,
        then ``last_checkpoint`` names it), each file written atomically."""
        if not self.save_dir or not self.save_to_disk:
            return
        if self.random_init:  # the runs downstream of random weights stay labelled
            kwargs.setdefault(RANDOM_INIT_KEY, True)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f), what="checkpoint")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename.encode()), what="last_checkpoint")

    def _load_file(self, filename):
        data = load_checkpoint_object(filename, "MODEL.WEIGHTS" if filename.endswith(".pkl") else "checkpoint")
        if not isinstance(data, dict):
            raise CheckpointError(f"checkpoint {filename!r} holds a {type(data).__name__}, not a dict")
        if filename.endswith(".pkl"):
            if "model" in data and "__author__" in data:
                self.logger.info(f"Reading a file from '{data['__author__']}'")
            else:  # Caffe2 / Detectron1 model zoo layout, as upstream
                blobs = data.get("blobs", data)
                blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
                data = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        elif "model" not in data:
            data = {"model": data}
        if self.strip_prefix:
            before = len(data["model"])
            data["model"] = strip_prefix(data["model"], self.strip_prefix)
            if len(data["model"]) != before:
                self.logger.info(f"Using the {len(data['model'])} '{self.strip_prefix}*' tensors of {filename}")
        return data

    def _load_model(self, checkpoint):
        path = self._path or "checkpoint"
        if is_random_init(checkpoint):
            self.random_init = True
            logger.warning(_random_init_line(path))
        c2_names = checkpoint.get("__author__") == "Caffe2"  # Detectron1 names: upstream's rules
        if not c2_names:
            self._check_strictly(checkpoint, path)
        return super()._load_model(checkpoint)

    def _check_strictly(self, checkpoint, path):
        model_shapes = shapes_of(self.model.state_dict())
        ckpt_shapes = shapes_of(checkpoint["model"])
        if not any(k.startswith("module.") for k in model_shapes):  # as fvcore strips it
            ckpt_shapes = {k[len("module."):] if k.startswith("module.") else k: v
                           for k, v in ckpt_shapes.items()}
        mgd_model = any(k.startswith("t_net.") for k in model_shapes)
        if mgd_model:
            depths = dict(depth=resnet_depth(model_shapes, "s_net.backbone.bottom_up."),
                          teacher_depth=resnet_depth(model_shapes, "t_net.backbone.bottom_up."))
        else:
            depths = dict(depth=resnet_depth(model_shapes, "backbone.bottom_up."))
        mgd = mgd_model or bool(self.strip_prefix)
        check_checkpoint_role(ckpt_shapes, path, self.role, mgd=mgd, **depths)
        heuristics = bool(checkpoint.get("matching_heuristics", False))
        dropped = plan_load(model_shapes, ckpt_shapes, path, self.role, mgd=mgd,
                            heuristics=heuristics)
        if dropped:
            shown = ", ".join(f"{k} {tuple(ckpt_shapes[k])}" for k in dropped)
            for key in dropped:
                checkpoint["model"].pop(key, None)
                checkpoint["model"].pop("module." + key, None)
            logger.warning(f"MODEL.WEIGHTS {path}: the classification output layer ({shown}) is "
                           "for another number of classes; it is re-initialised (fine-tuning on "
                           "this label set)")


def _num_anchors(cfg) -> int:
    sizes, ratios = cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
    return len(sizes[0]) * len(ratios[0])


def check_weights_for_config(cfg, role: str) -> None:
    """Check ``cfg.MODEL.WEIGHTS`` against the config from its keys and shapes only.

    Args:
        cfg: the run's config (``add_mgd_config`` applied; MGD or plain RetinaNet).
        role: "train", "eval-student" (a plain config: evaluate that RetinaNet) or
            "eval-teacher" (MGD configs only).

    Raises :class:`CheckpointError` (one line naming the file and the role) for a missing or
    unreadable file, a file of the wrong kind (teacher+student vs single network vs bare
    backbone), a teacher where the student is expected or the reverse (ResNet depth read
    from the keys), or a class count that cannot be re-initialised (the teacher's, or at
    evaluation). Builds no model and writes nothing; an empty MODEL.WEIGHTS or a URL is not
    checked.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    path = cfg.MODEL.WEIGHTS
    if not path or "://" in path:
        return
    if not os.path.isfile(path):
        what = "is a folder, not a checkpoint file" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"MODEL.WEIGHTS {path!r} {what}; check the path "
                              f"({_MISSING_HINTS[role]})")
    state = extract_state_dict(load_checkpoint_object(path, "MODEL.WEIGHTS"), path, "MODEL.WEIGHTS")
    mgd = is_mgd_config(cfg)
    classes = dict(num_classes=cfg.MODEL.RETINANET.NUM_CLASSES, num_anchors=_num_anchors(cfg))
    if role == "train" and mgd:
        check_checkpoint_role(shapes_of(state), path, role, mgd=True, depth=cfg.MGD.STUDENT.DEPTH,
                              teacher_depth=cfg.MGD.TEACHER.DEPTH, **classes)
    elif mgd:
        net = cfg.MGD.TEACHER if role == "eval-teacher" else cfg.MGD.STUDENT
        prefix = "t_net." if role == "eval-teacher" else "s_net."
        check_checkpoint_role(shapes_of(strip_prefix(state, prefix)), path, role, mgd=True,
                              depth=net.DEPTH, **classes)
    elif role == "eval-teacher":
        raise CheckpointError("--eval-teacher needs an MGD config (it evaluates the teacher of "
                              "a distillation); pass the MGD config, or drop --eval-teacher")
    else:
        check_checkpoint_role(shapes_of(state), path, role, mgd=False,
                              depth=cfg.MODEL.RESNETS.DEPTH, **classes)
