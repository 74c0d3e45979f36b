"""The input files of the checkpoint scripts: the two of a merge
(``scripts/merge-models-into-one.py``: a trained detector as the teacher, deeper than the
converted torchvision ResNet that is the student, and not the same file) and the one of a split
(``scripts/convert-output-to-d2.py``, ``make convert-all``: an MGD file that holds the net asked
for). Every refusal is a one-line :class:`CheckpointError` that says what to pass instead.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Tuple

from .contents import detector_of
from .errors import CheckpointError
from .format import (
    D2_BACKBONE_PREFIX,
    DEPTH_LAYOUTS,
    STUDENT_PREFIX,
    TEACHER_PREFIX,
    layout_text,
    resnet_depth,
    resnet_layout,
)
from .roles import Role, _as_role

__all__ = [
    "check_split",
    "validate_teacher",
    "validate_student",
    "check_roles",
    "check_merge_inputs",
    "check_distinct_inputs",
]


def _sample(keys: Sequence[str], n: int = 2) -> str:
    keys = sorted(keys)
    return ", ".join(repr(k) for k in keys[:n]) + (", ..." if len(keys) > n else "")


def check_split(state: Mapping[str, Any], path, role: Role) -> None:
    """An extraction of one net (``scripts/convert-output-to-d2.py``, ``make convert-all``) of
    an MGD file: the role's (:attr:`Role.prefix`) keys must be there."""
    role = _as_role(role)
    if role not in (Role.STUDENT, Role.TEACHER):
        raise ValueError(f"an extraction takes the student or the teacher, not {role}")
    if any(k.startswith(role.prefix) for k in state):
        return
    eval_teacher = role is Role.TEACHER
    name = "teacher (t_net.*)" if eval_teacher else "student (s_net.*)"
    other = STUDENT_PREFIX if eval_teacher else TEACHER_PREFIX
    if any(k.startswith(other) for k in state):
        hint = ("drop --eval-teacher to extract the student" if eval_teacher
                else "it holds only t_net.* keys; add --eval-teacher for the teacher")
    else:
        hint = ("it is not an MGD distillation checkpoint (keys like "
                f"{_sample(list(state))}); pass a checkpoint written by the MGD training")
    raise CheckpointError(f"{str(path)!r} has no {name} keys; {hint}")


def _check_depth(keys, prefix: str, expected: Optional[int], role: str, path: str,
                 hint: str) -> Optional[int]:
    found = resnet_depth(keys, prefix)
    if expected is None:
        return found
    if expected not in DEPTH_LAYOUTS:
        raise CheckpointError(f"unsupported --{role}-depth {expected}; choose one of "
                              f"{sorted(DEPTH_LAYOUTS)}")
    if found != expected:
        raise CheckpointError(f"{role} {path!r} is {layout_text(keys, prefix)}, not the "
                              f"ResNet-{expected} that --{role}-depth {expected} asks for; "
                              f"{hint}")
    return found


def validate_teacher(sd: Mapping[str, Any], path, depth: Optional[int] = None) -> Optional[int]:
    """Check that ``sd`` is a Detectron2 detector (RetinaNet, Faster / Mask R-CNN); return its
    backbone depth (or None)."""
    path = str(path)
    keys = list(sd)
    if any(k.startswith((TEACHER_PREFIX, STUDENT_PREFIX)) for k in keys):
        raise CheckpointError(f"teacher {path!r} is already a distillation checkpoint "
                              "(t_net./s_net. keys); extract the teacher first with "
                              "scripts/convert-output-to-d2.py IN OUT --eval-teacher")
    if resnet_layout(keys) is not None or any(k.startswith("layer1.") for k in keys):
        raise CheckpointError(f"teacher {path!r} is a bare ResNet backbone, not a detector; "
                              "pass the base training's output (e.g. model_final.pth of "
                              "`make base DEPTH=50`)")
    has_backbone = any(k.startswith(D2_BACKBONE_PREFIX) for k in keys)
    has_head = detector_of(keys) is not None
    if not (has_backbone and has_head):
        missing = " and ".join(n for n, ok in (("backbone.bottom_up.*", has_backbone),
                                                ("head.* or roi_heads.*", has_head)) if not ok)
        raise CheckpointError(f"teacher {path!r} does not look like a Detectron2 detector "
                              f"(no {missing} keys; it has e.g. {_sample(keys)}); pass the "
                              "base training's checkpoint (make base DEPTH=50)")
    if resnet_layout(keys, D2_BACKBONE_PREFIX) is None:
        raise CheckpointError(f"teacher {path!r} has no ResNet stages under "
                              "backbone.bottom_up.res2-5; pass a detector with a ResNet "
                              "backbone")
    return _check_depth(keys, D2_BACKBONE_PREFIX, depth, "teacher", path,
                        "pass the base training output of that depth (make base DEPTH=...)")


def validate_student(sd: Mapping[str, Any], path, depth: Optional[int] = None) -> Optional[int]:
    """Check that ``sd`` is a torchvision-converted bare ResNet; return its depth (or None)."""
    path = str(path)
    keys = list(sd)
    if any(k.startswith((TEACHER_PREFIX, STUDENT_PREFIX)) for k in keys):
        raise CheckpointError(f"student {path!r} is a distillation checkpoint (t_net./s_net. "
                              "keys), not a backbone; pass the converted torchvision ResNet "
                              "(e.g. r-18.pkl)")
    if any(k.startswith(("backbone.", "head.", "proposal_generator.", "roi_heads."))
           for k in keys):
        raise CheckpointError(f"student {path!r} is a whole detector (backbone./head. keys), "
                              "not a bare backbone; pass the torchvision ResNet converted by "
                              "detectron2/tools/convert-torchvision-to-d2.py (e.g. r-18.pkl)")
    if any(k.startswith(("layer1.", "layer2.")) for k in keys):
        raise CheckpointError(f"student {path!r} is an unconverted torchvision state dict "
                              "(layer1.* keys); convert it first with "
                              "detectron2/tools/convert-torchvision-to-d2.py IN.pth OUT.pkl")
    if not any(k.startswith("stem.") for k in keys) or resnet_layout(keys) is None:
        raise CheckpointError(f"student {path!r} is not a converted ResNet backbone (expected "
                              f"stem.* and res2.*-res5.* keys, found e.g. {_sample(keys)}); "
                              "pass the output of convert-torchvision-to-d2.py")
    return _check_depth(keys, "", depth, "student", path,
                        "pass the converted torchvision weights of that depth")


def check_roles(teacher_depth: Optional[int], student_depth: Optional[int], teacher_path,
                student_path, allow_shallow_teacher: bool = False) -> None:
    """Refuse a teacher that is not deeper than the student (MGD distils e.g. R50 -> R18),
    unless ``allow_shallow_teacher``; depths unknown (None) are not compared."""
    if allow_shallow_teacher or teacher_depth is None or student_depth is None:
        return
    if teacher_depth <= student_depth:
        raise CheckpointError(
            f"teacher {str(teacher_path)!r} is a ResNet-{teacher_depth}, not deeper than the student "
            f"{str(student_path)!r} (ResNet-{student_depth}): MGD distils a deeper teacher into a "
            "shallower student (the paper: R50 -> R18); pass the R50 base run (`make base DEPTH=50`: "
            "output/base-R50/model_final.pth), or --allow-shallow-teacher (make: ALLOW_ANY_TEACHER=1) "
            "to merge it anyway")


def check_merge_inputs(teacher: Mapping[str, Any], student: Mapping[str, Any], teacher_path,
                       student_path, teacher_depth: Optional[int] = None,
                       student_depth: Optional[int] = None,
                       allow_shallow_teacher: bool = False) -> Tuple[Optional[int], Optional[int]]:
    """The two inputs of a merge (``scripts/merge-models-into-one.py``): a trained detector
    teacher, a converted torchvision ResNet student, the teacher deeper (unless
    ``allow_shallow_teacher``); ``teacher_depth``/``student_depth``: the depths asked for
    (None: any). Returns the depths read from the keys."""
    found_teacher = validate_teacher(teacher, teacher_path, teacher_depth)
    found_student = validate_student(student, student_path, student_depth)
    check_roles(found_teacher, found_student, teacher_path, student_path, allow_shallow_teacher)
    return found_teacher, found_student


def check_distinct_inputs(teacher_path, student_path) -> None:
    """A merge of a file with itself is a mistake (checked before either is read)."""
    if (os.path.isfile(teacher_path) and os.path.isfile(student_path)
            and os.path.samefile(teacher_path, student_path)):
        raise CheckpointError(f"TEACHER and STUDENT are the same file {str(teacher_path)!r}: pass "
                              "the trained RetinaNet teacher (e.g. output/base-R50/model_final.pth) "
                              "and the student's ImageNet backbone (e.g. weights/r-18.pkl)")
