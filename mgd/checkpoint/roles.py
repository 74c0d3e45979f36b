"""What a run asks of its weights: its :class:`Role` (an MGD training, a plain detector
training, the evaluation of an MGD config's student or teacher, or of a plain detector), whether
its weights path is a local file to check (:func:`check_weights_path`), and the part of a file
it loads (:func:`select_network`: one net of an MGD file). The checks against a role are
:mod:`.strict` (kind, detector, depth, classes) and :mod:`.load_plan` (tensor by tensor).
"""

from __future__ import annotations

import enum
import os
from typing import Any, Dict, Iterable, Mapping

from .errors import CheckpointError
from .format import STUDENT_PREFIX, TEACHER_PREFIX

__all__ = [
    "Role",
    "check_weights_path",
    "select_network",
]


class Role(enum.Enum):
    """What a run asks of its weights (``MODEL.WEIGHTS``, or a script's input)."""

    MGD_TRAINING = "mgd-training"      #: teacher (t_net.*) + the student's backbone, at least
    RETINANET_TRAINING = "retinanet-training"  #: ImageNet backbone or a RetinaNet
    STUDENT = "student"                #: the student of an MGD config, evaluated (or measured)
    TEACHER = "teacher"                #: the teacher of an MGD config, evaluated (or measured)
    RETINANET = "retinanet"            #: a plain RetinaNet, evaluated

    @classmethod
    def of_run(cls, *, mgd: bool, eval_only: bool = False, eval_teacher: bool = False) -> "Role":
        """The role of a ``train_net.py`` run: its config (MGD or not) and its flags."""
        if eval_teacher and not mgd:
            raise CheckpointError("--eval-teacher needs an MGD config (it evaluates the teacher of "
                                  "a distillation); pass the MGD config, or drop --eval-teacher")
        if eval_teacher:
            return cls.TEACHER
        if eval_only:
            return cls.STUDENT if mgd else cls.RETINANET
        return cls.MGD_TRAINING if mgd else cls.RETINANET_TRAINING

    @classmethod
    def of_loader(cls, model_keys: Iterable[str], prefix: str = "") -> "Role":
        """The role a loader serves when none is named: the net its key ``prefix`` takes out of
        an MGD file (``t_net.``: the teacher, ``s_net.``: the student), else a training of the
        model (an MGD model holds ``t_net.*`` keys)."""
        if prefix == TEACHER_PREFIX:
            return cls.TEACHER
        if prefix == STUDENT_PREFIX:
            return cls.STUDENT
        if any(k.startswith(TEACHER_PREFIX) for k in model_keys):
            return cls.MGD_TRAINING
        return cls.RETINANET_TRAINING

    @property
    def training(self) -> bool:
        return self in (Role.MGD_TRAINING, Role.RETINANET_TRAINING)

    @property
    def mgd(self) -> bool:
        """The run's config is an MGD (teacher+student) config."""
        return self in (Role.MGD_TRAINING, Role.STUDENT, Role.TEACHER)

    @property
    def prefix(self) -> str:
        """The key prefix of this role's net in an MGD file ("" when the role takes the file whole)."""
        return {Role.TEACHER: TEACHER_PREFIX, Role.STUDENT: STUDENT_PREFIX}.get(self, "")

    @property
    def words(self) -> str:
        """The network this role loads, in words."""
        return {Role.MGD_TRAINING: "the MGD teacher+student",
                Role.RETINANET_TRAINING: "the detector being trained",
                Role.STUDENT: "the student being evaluated",
                Role.TEACHER: "the teacher being evaluated",
                Role.RETINANET: "the detector being evaluated"}[self]

    @property
    def source_hint(self) -> str:
        """Where this role's weights come from (the make target that writes them)."""
        return {Role.MGD_TRAINING: "make the merged teacher/student checkpoint with `make merge`",
                Role.RETINANET_TRAINING: "get the ImageNet weights with `make weights`",
                Role.STUDENT: "split a distillation run's student with `make convert-all`, or pass "
                              "a .pth/.pkl checkpoint",
                Role.TEACHER: "split a distillation run's teacher with `make convert-all "
                              "EVAL_TEACHER=1` (model_final.teacher.pkl), or pass a .pth/.pkl checkpoint",
                Role.RETINANET: "pass a trained detector's .pth/.pkl checkpoint"}[self]


_DOWNLOADED = ("http://", "https://", "detectron2://", "catalog://")


def check_weights_path(path: str, role: Role, what: str = "MODEL.WEIGHTS") -> bool:
    """Whether ``path`` is a local file to check further; refuses an empty path where the role
    needs trained weights (every role but a plain training, which may start from random
    initialisation), a missing file and a folder. A URL or a catalog name (Detectron2
    downloads it) is not checked: returns False, as for an allowed empty path."""
    if not path:
        if role is Role.RETINANET_TRAINING:
            return False
        raise CheckpointError(f"{what} is empty: this run needs trained weights; {role.source_hint}")
    if path.startswith(_DOWNLOADED) or "://" in path:
        return False
    if os.path.isdir(path):
        raise CheckpointError(f"{what} {path} is a folder, not a checkpoint file; {role.source_hint}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path} not found; {role.source_hint}")
    return True


def _as_role(role) -> Role:
    if not isinstance(role, Role):
        raise TypeError(f"role must be a mgd.checkpoint.Role, got {role!r}")
    return role


def select_network(state: Mapping[str, Any], path: str, role: Role,
                   what: str = "MODEL.WEIGHTS") -> Dict[str, Any]:
    """The part of ``state`` that ``role`` loads: for the teacher or the student of an MGD
    config, the ``t_net.``/``s_net.`` keys of an MGD file without the prefix (a RetinaNet
    file as it is); for any other role, the file as it is. Refuses an MGD file without the
    role's net."""
    role = _as_role(role)
    if not role.prefix or not any(k.startswith((TEACHER_PREFIX, STUDENT_PREFIX)) for k in state):
        return dict(state)
    kept = {k[len(role.prefix):]: v for k, v in state.items() if k.startswith(role.prefix)}
    if not kept:
        net = "teacher" if role is Role.TEACHER else "student"
        raise CheckpointError(f"{what} {path!r} is an MGD checkpoint without {role.prefix}* "
                              f"tensors (no {net}); pass a checkpoint that holds the {net}")
    return kept
