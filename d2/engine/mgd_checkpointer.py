"""Checkpoints for MGD runs: read as data, loaded strictly where a mismatch means a wrong answer.

``MGDCheckpointer`` is Detectron2's ``DetectionCheckpointer`` with:

* files read as data (restricted unpickling of ``.pkl``, ``torch.load(weights_only=True)``
  for ``.pth``; :mod:`mgd.checkpoint`), one-line :class:`CheckpointError` for bad files;
* an optional key prefix stripped (``s_net.``/``t_net.``: evaluating one net of a
  distillation checkpoint);
* the rules of :mod:`mgd.checkpoint.strict` (which alone decides) applied before the weights are copied: a
  tensor whose shape differs from the model's, a teacher where a student is expected (or
  the reverse), an incomplete teacher (MGD training) or evaluated network is refused; a
  training that fine-tunes on another label set re-initialises the classifier
  (``head.cls_score``) with one log line;
* weights made from random initialisation (``__random_init__`` in the file, written by
  ``make weights RANDOM_INIT=1``) announced in one log line, and the mark carried into the
  checkpoints this run saves;
* checkpoints saved atomically (a temporary file in the folder, renamed into place; the same
  for ``last_checkpoint``): a run stopped while saving leaves the previous files intact.

:func:`check_weights_for_config` asks the same module from the config alone, before any
model is built or anything is logged.
"""
import logging
import os
from typing import Optional

import torch

from detectron2.checkpoint import DetectionCheckpointer

from mgd.checkpoint import (
    RANDOM_INIT_KEY,
    CheckpointError,
    Role,
    atomic_write,
    check_model_load,
    check_weights_path,
    check_weights_state,
    extract_state_dict,
    is_random_init,
    load_checkpoint_object,
    shapes_of,
    strip_prefix,
)
from mgd.config import detector_name, is_mgd_config, num_classes

__all__ = ["MGDCheckpointer", "check_weights_for_config", "strip_prefix", "Role"]

logger = logging.getLogger("detectron2.mgd")


def _random_init_line(path: str) -> str:
    return (f"MODEL.WEIGHTS {path} holds RANDOMLY INITIALISED weights (make weights "
            "RANDOM_INIT=1), not ImageNet-pretrained ones: results are not comparable with "
            "ImageNet-initialised runs")


class MGDCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that reads checkpoints as data and loads them strictly.

    Args:
        strip_prefix: keep only the keys with this prefix, without it (``Role.TEACHER.prefix``
            "t_net.", ``Role.STUDENT.prefix`` "s_net.").
        role: a :class:`mgd.checkpoint.Role`; by default ``Role.of_loader``: the teacher for
            ``strip_prefix="t_net."``, the student for "s_net.", else a training of the
            model. Pass ``Role.RETINANET`` to evaluate a plain RetinaNet.
    """

    def __init__(self, model, save_dir="", *, strip_prefix: str = "", role: Optional[Role] = None,
                 **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strip_prefix = strip_prefix
        self.role = role or Role.of_loader(self.model.state_dict().keys(), strip_prefix)  # unwrapped by fvcore
        if not isinstance(self.role, Role):
            raise TypeError(f"role must be a mgd.checkpoint.Role, got {self.role!r}")
        self.random_init = False
        self._path = ""

    def load(self, path, checkpointables=None):
        if path:  # fvcore would assert on a missing file
            check_weights_path(path, self.role)
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
        ckpt_shapes = shapes_of(checkpoint["model"])
        dropped = check_model_load(shapes_of(self.model.state_dict()), ckpt_shapes, path, self.role,
                                   heuristics=bool(checkpoint.get("matching_heuristics", False)))
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


def check_weights_for_config(cfg, role: Role) -> None:
    """Check ``cfg.MODEL.WEIGHTS`` against the config from its keys and shapes only
    (:func:`mgd.checkpoint.check_weights_state` with the config's depths and class count).

    Args:
        cfg: the run's config (``add_mgd_config`` applied; MGD or plain RetinaNet).
        role: what the run asks of the file (``Role.of_run``).

    Raises :class:`CheckpointError` (one line naming the file and the role) for a missing or
    unreadable file, a file of the wrong kind (teacher+student vs single network vs bare
    backbone), a teacher where the student is expected or the reverse (ResNet depth read
    from the keys), or a class count that cannot be re-initialised (the teacher's, or at
    evaluation). Builds no model and writes nothing; a URL is not checked.
    """
    path = cfg.MODEL.WEIGHTS
    if not check_weights_path(path, role):
        return
    if role.mgd != is_mgd_config(cfg):
        raise ValueError(f"{role} is not a role of this config (MGD: {is_mgd_config(cfg)})")
    state = extract_state_dict(load_checkpoint_object(path, "MODEL.WEIGHTS"), path, "MODEL.WEIGHTS")
    student, teacher = (detector_name(cfg, "student"), detector_name(cfg, "teacher")) if role.mgd else (None, None)
    nets = {Role.MGD_TRAINING: dict(depth=cfg.MGD.STUDENT.DEPTH, teacher_depth=cfg.MGD.TEACHER.DEPTH,
                                    detector=student, teacher_detector=teacher, num_classes=num_classes(cfg, teacher)),
            Role.STUDENT: dict(depth=cfg.MGD.STUDENT.DEPTH, detector=student, num_classes=num_classes(cfg, student)),
            Role.TEACHER: dict(depth=cfg.MGD.TEACHER.DEPTH, detector=teacher, num_classes=num_classes(cfg, teacher))}
    plain = detector_name(cfg)
    check_weights_state(state, path, role, num_anchors=_num_anchors(cfg),
                        **nets.get(role, dict(depth=cfg.MODEL.RESNETS.DEPTH, detector=plain,
                                              num_classes=num_classes(cfg, plain))))
