"""Which checkpoint may start which run: the file's kind, detector, ResNet depths and class
count against the run's :class:`~.roles.Role`, read from key names and shapes.

Every run and loader asks this module (``train_net.py`` through ``check_weights_for_config``,
``MGDCheckpointer``, ``scripts/measure_matched_cost.py``); none decides on its own.

* :func:`check_checkpoint_role` - the kind of file (teacher+student distillation file,
  detector, bare backbone), the detector, the ResNet depth of each net and the classifier's
  class count, against what a run expects. Runs before any model is built;
  :func:`check_weights_state` applies it to a loaded file (one net taken out of an MGD file);
* :func:`check_model_load` - everything a loader asks before copying a file into a built model:
  this check against the model's own depths and detectors, then every tensor
  (:func:`.load_plan.plan_load`).

Rules: a teacher where a student is expected, or the reverse (the depth is read from the
keys); an MGD training needs a teacher+student file with the whole teacher, head included; a
trained network (evaluation) needs a head; another detector than the config builds is refused
where the file has a head; the class count is checked where a classifier cannot be
re-initialised (the teacher, any evaluation).

Every refusal is a :class:`CheckpointError` whose one line names the file, the role and the
first mismatch (see docs/checkpoints.md).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from .contents import NUM_CLASSES_KEY, Shapes, checkpoint_kind, detector_of, shapes_of, strip_prefix
from .errors import CheckpointError
from .format import D2_BACKBONE_PREFIX, STUDENT_PREFIX, TEACHER_PREFIX, layout_text, resnet_depth
from .load_plan import plan_load
from .roles import Role, _as_role

__all__ = [
    "check_checkpoint_role",
    "check_weights_state",
    "check_model_load",
]


def _classes(shapes: Shapes, prefix: str, num_anchors: Optional[int]) -> Optional[int]:
    """The class count a file's classifier was trained for (None: not readable)."""
    bias = shapes.get(prefix + "roi_heads.box_predictor.cls_score.bias")
    if bias is not None:  # an R-CNN box predictor: the classes and background
        return bias[0] - 1 if len(bias) == 1 else None
    bias = shapes.get(prefix + "head.cls_score.bias")
    if bias is None or not num_anchors or len(bias) != 1 or bias[0] % num_anchors:
        return None
    return bias[0] // num_anchors


def _other_detector(name: str, found: Optional[str], expected: Optional[str], who: str, where: str) -> None:
    """Refuse a file whose detector is not the one the config builds (both known)."""
    if found and expected and found != expected:
        raise CheckpointError(f"{name} holds a {found}, but {who} is a {expected} ({where}); pass a {expected} "
                              f"checkpoint, or a config of a {found}")


def check_checkpoint_role(shapes: Shapes, path: str, role: Role, *,
                          depth: Optional[int], teacher_depth: Optional[int] = None,
                          num_classes: Optional[int] = None, num_anchors: Optional[int] = None,
                          detector: Optional[str] = None, teacher_detector: Optional[str] = None,
                          what: str = "MODEL.WEIGHTS") -> None:
    """Refuse a checkpoint of the wrong kind, detector, depth or class count for ``role``.

    Args:
        shapes: ``{key: shape}`` of the checkpoint (for the evaluation of an MGD config's net,
            after its ``s_net.``/``t_net.`` prefix is stripped, as the loader does).
        role: what the run asks of the file (:class:`Role`).
        depth: the ResNet depth of the student (MGD training), of the evaluated net
            (evaluation) or of the model (plain training); None = not checked.
        teacher_depth: the teacher's depth (MGD training only).
        num_classes, num_anchors: the config's class count and anchors per position;
            checked where a classifier cannot be re-initialised (the teacher, evaluation).
        detector, teacher_detector: the detector the config builds (a name of
            :data:`DETECTOR_HEADS`) for the net of ``depth`` and for the teacher; None = not checked.
    """
    role = _as_role(role)
    name = f"{what} {path!r}"
    keys = list(shapes)
    kind = checkpoint_kind(keys)
    if kind == "torchvision":
        raise CheckpointError(f"{name} is an unconverted torchvision state dict (layer1.* keys); "
                              "convert it with detectron2/tools/convert-torchvision-to-d2.py "
                              "(make weights does)")
    if kind == "unknown":
        raise CheckpointError(f"{name} holds no ResNet, detector or MGD weights (keys like "
                              f"{', '.join(sorted(keys)[:2])}); pass a checkpoint of this project")

    if role is Role.MGD_TRAINING:
        _check_mgd_training(shapes, name, kind, depth, teacher_depth, num_classes, num_anchors,
                            detector, teacher_detector)
        return
    if kind == "distillation":
        if role is Role.RETINANET_TRAINING:
            raise CheckpointError(f"{name} is an MGD distillation checkpoint (t_net./s_net. keys); "
                                  "a plain detector training cannot start from it: extract one "
                                  "net first (scripts/convert-output-to-d2.py IN OUT.pkl "
                                  "[--eval-teacher])")
        raise CheckpointError(f"{name} is an MGD distillation checkpoint (t_net./s_net. keys) "
                              "but the config is a plain detector; evaluate it with the MGD "
                              "config (--eval-teacher for the teacher) or extract one net "
                              "(make convert-all)")

    who = role.words
    prefix = D2_BACKBONE_PREFIX if kind == "detector" else ""
    found = resnet_depth(keys, prefix)
    found_detector = detector_of(keys)
    if not role.training and found_detector is None:
        hint = ("it looks like the merged input of `make distill`, not a trained network; "
                "evaluate the distillation's output (make convert-all, then "
                "model_final.pkl)" if kind == "detector" and role.mgd
                else "it is a backbone, not a trained detector")
        raise CheckpointError(f"{name} has no detection head (head.* or roi_heads.* keys) for {who}; {hint}")
    where = {Role.STUDENT: "MGD.STUDENT.META_ARCHITECTURE", Role.TEACHER: "MGD.TEACHER.META_ARCHITECTURE"}.get(
        role, "MODEL.META_ARCHITECTURE")
    _other_detector(name, found_detector, detector, who, where)
    if depth is not None and found != depth:
        if what != "MODEL.WEIGHTS":  # a script's input (measure_matched_cost.py): no train_net flags
            hint = f"pass the {role.value}'s checkpoint (ResNet-{depth})"
        elif role is Role.STUDENT:
            hint = ("a teacher where the student is expected? add --eval-teacher (make eval "
                    "EVAL_TEACHER=1 reads model_final.teacher.pkl) or pass the student's weights")
        elif role is Role.TEACHER:
            hint = ("the student where the teacher is expected? drop --eval-teacher, or pass "
                    "the teacher's weights (model_final.teacher.pkl of make convert-all "
                    "EVAL_TEACHER=1)")
        elif role is Role.RETINANET:
            hint = f"pass a {detector or 'detector'} R{depth} checkpoint or a config of the file's depth"
        else:
            hint = (f"pass weights of that depth (e.g. weights/r-{depth}.pkl) or set "
                    "MODEL.RESNETS.DEPTH to the file's")
        raise CheckpointError(f"{name} is {layout_text(keys, prefix)}, but {who} is "
                              f"ResNet-{depth}; {hint}")
    if not role.training and num_classes is not None:
        found_classes = _classes(shapes, "", num_anchors)
        if found_classes is not None and found_classes != num_classes:
            raise CheckpointError(f"{name} was trained for {found_classes} classes, but {who} has "
                                  f"{NUM_CLASSES_KEY.get(found_detector, 'MODEL.RETINANET.NUM_CLASSES')} "
                                  f"{num_classes}; evaluate it on its "
                                  "own label set, or with a config of that class count")


def _check_mgd_training(shapes: Shapes, name: str, kind: str, student_depth: Optional[int],
                        teacher_depth: Optional[int], num_classes: Optional[int],
                        num_anchors: Optional[int], student_detector: Optional[str] = None,
                        teacher_detector: Optional[str] = None) -> None:
    keys = list(shapes)
    if kind != "distillation":
        what = {"detector": f"a single {detector_of(keys) or 'detector'}", "backbone": "a bare ResNet backbone"}[kind]
        layout = layout_text(keys, D2_BACKBONE_PREFIX if kind == "detector" else "")
        raise CheckpointError(f"{name} is {what}, {layout}, not a teacher+student file for MGD training; "
                              "merge the teacher and the student first (make merge)")
    teacher_prefix = TEACHER_PREFIX + D2_BACKBONE_PREFIX
    student_prefix = STUDENT_PREFIX + D2_BACKBONE_PREFIX
    if not any(k.startswith(TEACHER_PREFIX) for k in keys):
        raise CheckpointError(f"{name} has no teacher (t_net.* keys), which MGD training needs "
                              "whole; merge a trained teacher in (make merge TEACHER=...)")
    found_teacher = resnet_depth(keys, teacher_prefix)
    has_student = any(k.startswith(student_prefix) for k in keys)
    if not has_student:
        raise CheckpointError(f"{name} has no student backbone ({student_prefix}* keys): the "
                              "student would start from nothing; merge the teacher with the "
                              "student's backbone weights (make merge STUDENT=weights/r-18.pkl)")
    found_student = resnet_depth(keys, student_prefix)
    swapped = (found_teacher == student_depth and found_student == teacher_depth
               and teacher_depth != student_depth)
    swap_hint = ("; the student where the teacher is expected and the reverse: merge them "
                 f"the other way round (make merge TEACHER=<base R{teacher_depth} checkpoint> "
                 f"STUDENT=<r-{student_depth}.pkl>)") if swapped else ""
    if teacher_depth is not None and found_teacher != teacher_depth:
        raise CheckpointError(f"{name}: its teacher (t_net.*) is "
                              f"{layout_text(keys, teacher_prefix)}, but the config's teacher "
                              f"is ResNet-{teacher_depth} (MGD.TEACHER.DEPTH){swap_hint}")
    if has_student and student_depth is not None and found_student != student_depth:
        raise CheckpointError(f"{name}: its student (s_net.*) is "
                              f"{layout_text(keys, student_prefix)}, but the config's student "
                              f"is ResNet-{student_depth} (MGD.STUDENT.DEPTH){swap_hint}")
    found_detector = detector_of(keys, TEACHER_PREFIX)
    if found_detector is None:
        raise CheckpointError(f"{name}: its teacher (t_net.*) has no detection head "
                              f"(t_net.head.* or t_net.roi_heads.*); the teacher must be a trained "
                              f"{teacher_detector or 'detector'} (make base DEPTH=50, then make merge)")
    _other_detector(name, found_detector, teacher_detector, "the config's teacher", "MGD.TEACHER.META_ARCHITECTURE")
    # a distillation's own checkpoint (a resumed or continued run) holds the student's heads too
    _other_detector(name, detector_of(keys, STUDENT_PREFIX), student_detector, "the config's student",
                    "MGD.STUDENT.META_ARCHITECTURE")
    if num_classes is not None:
        found_classes = _classes(shapes, TEACHER_PREFIX, num_anchors)
        if found_classes is not None and found_classes != num_classes:
            raise CheckpointError(f"{name}: its teacher was trained for {found_classes} classes, "
                                  f"but the config has {NUM_CLASSES_KEY[found_detector]} {num_classes}; "
                                  "a teacher's classifier is never re-initialised: train a teacher "
                                  "on this label set (make base DEPTH=50) and merge it")



def _model_depths(model_shapes: Shapes, role: Role) -> Dict[str, Any]:
    """The depths and detectors :func:`check_checkpoint_role` compares, read from a built model's keys."""
    if any(k.startswith(TEACHER_PREFIX) for k in model_shapes):
        return dict(depth=resnet_depth(model_shapes, STUDENT_PREFIX + D2_BACKBONE_PREFIX),
                    teacher_depth=resnet_depth(model_shapes, TEACHER_PREFIX + D2_BACKBONE_PREFIX),
                    detector=detector_of(model_shapes, STUDENT_PREFIX),
                    teacher_detector=detector_of(model_shapes, TEACHER_PREFIX))
    # a plain training may start from a backbone, or fine-tune a detector of its own kind
    return dict(depth=resnet_depth(model_shapes, D2_BACKBONE_PREFIX), detector=detector_of(model_shapes))


def check_model_load(model_shapes: Shapes, ckpt_shapes: Shapes, path: str, role: Role, *,
                     heuristics: bool, what: str = "MODEL.WEIGHTS") -> List[str]:
    """Everything a loader asks before copying ``ckpt_shapes`` into a built model: the file's
    kind and depths against the model's (:func:`check_checkpoint_role`), then every tensor
    (:func:`plan_load`). ``module.`` (a DistributedDataParallel save) is stripped as fvcore
    does. Returns the checkpoint keys to leave out (a classifier re-initialised)."""
    if not any(k.startswith("module.") for k in model_shapes):
        ckpt_shapes = {k[len("module."):] if k.startswith("module.") else k: v
                       for k, v in ckpt_shapes.items()}
    check_checkpoint_role(ckpt_shapes, path, role, what=what, **_model_depths(model_shapes, role))
    return plan_load(model_shapes, ckpt_shapes, path, role, heuristics=heuristics, what=what)


def check_weights_state(state: Mapping[str, Any], path: str, role: Role, *,
                        depth: Optional[int], teacher_depth: Optional[int] = None,
                        num_classes: Optional[int] = None, num_anchors: Optional[int] = None,
                        detector: Optional[str] = None, teacher_detector: Optional[str] = None,
                        what: str = "MODEL.WEIGHTS") -> None:
    """:func:`check_checkpoint_role` on a loaded file, the role's net taken out of an MGD file
    first (:func:`select_network`); the depths and detectors are the config's (see there)."""
    role = _as_role(role)
    if role.prefix:
        state = strip_prefix(state, role.prefix)
    check_checkpoint_role(shapes_of(state), path, role, depth=depth, teacher_depth=teacher_depth,
                          num_classes=num_classes, num_anchors=num_anchors, detector=detector,
                          teacher_detector=teacher_detector, what=what)
