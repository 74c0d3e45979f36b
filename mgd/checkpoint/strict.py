"""Which checkpoint may start which run: the one place that decides, on key names and shapes.

Every entry point asks this module (``train_net.py`` through ``mgd_setup.check_weights``,
``MGDCheckpointer``, ``scripts/merge-models-into-one.py``, ``scripts/convert-output-to-d2.py``,
``scripts/convert_all.py``, ``scripts/measure_matched_cost.py``); none decides on its own.

* :class:`Role` - what a run asks of its weights: an MGD training (teacher+student), a plain
  RetinaNet training, the evaluation of an MGD config's student or teacher, or of a plain
  RetinaNet;
* :func:`check_weights_path` - a weights path is given where the role needs one, and is a file;
* :func:`check_checkpoint_role` - the kind of file (teacher+student distillation file,
  detector, bare backbone), the ResNet depth of each net read from its keys, and the
  classifier's class count, against what a run expects. Runs before any model is built;
  :func:`check_weights_state` applies it to a loaded file (one net taken out of an MGD file);
* :func:`plan_load` - every tensor against the model's state dict, matched the way
  Detectron2's loader will match them (exact names, or its suffix heuristics); returns the
  classifier keys to re-initialise when that is the only (allowed) difference.
  :func:`check_model_load` runs both against a built model;
* :func:`select_network` - one net (``t_net.``/``s_net.`` part) of an MGD file, or a
  RetinaNet file as it is; :func:`check_split` - the net an extraction asks for is there;
* :func:`validate_teacher`, :func:`validate_student`, :func:`check_merge_inputs` - the two
  inputs of a merge.

Rules:

* any tensor whose shape differs from the model's is refused, except a training that
  fine-tunes a detector on another label set: a mismatch confined to the classification
  output layer (``head.cls_score.*``; the student's in an MGD run) re-initialises it. Never
  for the teacher, never at evaluation;
* a teacher where a student is expected, or the reverse (the depth is read from the keys);
* an MGD run needs the whole teacher (``t_net.*``) and the student's whole backbone
  (``s_net.backbone.bottom_up.*``: its FPN and head may be new); an evaluation needs every tensor of
  the evaluated network; a plain training may start from ImageNet backbone weights
  (missing head keys are fine);
* a merge takes a trained RetinaNet teacher deeper than the student, and a converted
  torchvision ResNet as the student.

Every refusal is a :class:`CheckpointError` whose one line names the file, the role and the
first mismatching tensor (see docs/checkpoints.md).
"""

from __future__ import annotations

import enum
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

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

__all__ = [
    "Role",
    "CLASSIFIER_KEYS",
    "CLASSIFIER_KEYS_OF",
    "DETECTOR_HEADS",
    "checkpoint_kind",
    "detector_of",
    "strip_prefix",
    "shapes_of",
    "check_weights_path",
    "check_checkpoint_role",
    "check_weights_state",
    "match_keys",
    "plan_load",
    "check_model_load",
    "select_network",
    "check_split",
    "validate_teacher",
    "validate_student",
    "check_roles",
    "check_merge_inputs",
    "check_distinct_inputs",
]

#: the detectors a file may hold, told apart by their head keys: the first whose prefix a key has
DETECTOR_HEADS = (("Mask R-CNN", "roi_heads.mask_head."), ("Faster R-CNN", "roi_heads."), ("RetinaNet", "head."))
#: per detector, the output layers whose shapes follow the label set (the only ones a new label
#: set changes: re-initialised in a training)
CLASSIFIER_KEYS_OF = {
    "RetinaNet": ("head.cls_score.weight", "head.cls_score.bias"),
    "Faster R-CNN": ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
                     "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"),
}
CLASSIFIER_KEYS_OF["Mask R-CNN"] = CLASSIFIER_KEYS_OF["Faster R-CNN"] + (
    "roi_heads.mask_head.predictor.weight", "roi_heads.mask_head.predictor.bias")
#: the RetinaNet's (the paper's detector)
CLASSIFIER_KEYS = CLASSIFIER_KEYS_OF["RetinaNet"]
#: where the class count is set, per detector (for messages)
NUM_CLASSES_KEY = {"RetinaNet": "MODEL.RETINANET.NUM_CLASSES", "Faster R-CNN": "MODEL.ROI_HEADS.NUM_CLASSES",
                   "Mask R-CNN": "MODEL.ROI_HEADS.NUM_CLASSES"}
# derived from the config, never meaningful in a file
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")
_CONFIG_BUFFER_PARTS = ("anchor_generator.",)

Shapes = Mapping[str, Tuple[int, ...]]


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


def shapes_of(state: Mapping[str, object]) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of a state dict of numpy arrays or torch tensors."""
    return {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}


def strip_prefix(state: Mapping[str, object], prefix: str) -> Dict[str, object]:
    """Keep the keys starting with ``prefix``, without it; unchanged if none does."""
    if not prefix or not any(k.startswith(prefix) for k in state):
        return dict(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def checkpoint_kind(keys: Iterable[str]) -> str:
    """``"distillation"`` (t_net./s_net.), ``"detector"`` (backbone./head./roi_heads.), ``"backbone"``
    (converted ResNet: stem./res2-5.), ``"torchvision"`` (unconverted: layer1.) or ``"unknown"``."""
    keys = list(keys)
    if any(k.startswith((TEACHER_PREFIX, STUDENT_PREFIX)) for k in keys):
        return "distillation"
    if any(k.startswith(("backbone.", "head.", "proposal_generator.", "roi_heads.")) for k in keys):
        return "detector"
    if any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    if any(k.startswith(("stem.", "res2.", "res3.", "res4.", "res5.")) for k in keys):
        return "backbone"
    return "unknown"


def detector_of(keys: Iterable[str], prefix: str = "") -> Optional[str]:
    """The detector whose head the keys under ``prefix`` hold (a name of :data:`DETECTOR_HEADS`:
    "RetinaNet", "Faster R-CNN", "Mask R-CNN"), or None (no head: a backbone)."""
    keys = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    return next((name for name, head in DETECTOR_HEADS if any(k.startswith(head) for k in keys)), None)


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


def _as_role(role) -> Role:
    if not isinstance(role, Role):
        raise TypeError(f"role must be a mgd.checkpoint.Role, got {role!r}")
    return role


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
        raise CheckpointError(f"{name} is {what}, {layout}, not a teacher+student file for MGD training; merge the teacher "
                              "and the student first (make merge)")
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


def match_keys(model_keys: Sequence[str], ckpt_keys: Sequence[str], heuristics: bool
               ) -> Dict[str, str]:
    """``{model key: checkpoint key}`` as the loader pairs them.

    ``heuristics=False``: equal names (fvcore). ``heuristics=True`` (Detectron2's
    ``align_and_update_state_dicts`` for ``.pkl`` files with ``matching_heuristics``): the
    longest checkpoint key equal to the model key or a ``.``-separated suffix of it.
    """
    if not heuristics:
        present = set(ckpt_keys)
        return {k: k for k in model_keys if k in present}
    by_last: Dict[str, List[str]] = {}
    for ck in ckpt_keys:
        by_last.setdefault(ck.rsplit(".", 1)[-1], []).append(ck)
    pairs = {}
    for mk in model_keys:
        best = None
        for ck in by_last.get(mk.rsplit(".", 1)[-1], ()):
            if (mk == ck or mk.endswith("." + ck)) and (best is None or len(ck) > len(best)):
                best = ck
        if best is not None:
            pairs[mk] = best
    return pairs


def _is_config_buffer(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return last in _CONFIG_BUFFERS or any(part in key for part in _CONFIG_BUFFER_PARTS)


def _shape_text(shape: Tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def plan_load(model_shapes: Shapes, ckpt_shapes: Shapes, path: str, role: Role, *,
              heuristics: bool, what: str = "MODEL.WEIGHTS") -> List[str]:
    """Compare every tensor; refuse what must not load; return checkpoint keys to drop.

    The returned keys are the classifier's (``head.cls_score.*``, or the student's
    ``s_net.head.cls_score.*`` in an MGD run) when, in a training, they are the only tensors
    whose shapes differ: the caller leaves that layer at its initialisation. Anything else
    that differs, an incomplete teacher (MGD training) or an incomplete evaluated network
    raises :class:`CheckpointError`.
    """
    role = _as_role(role)
    name = f"{what} {path!r}"
    pairs = match_keys(sorted(model_shapes), sorted(ckpt_shapes), heuristics)
    differ = [(mk, ck) for mk, ck in pairs.items()
              if tuple(model_shapes[mk]) != tuple(ckpt_shapes[ck]) and not _is_config_buffer(mk)]

    def net_of(model_key: str) -> str:
        if model_key.startswith(TEACHER_PREFIX):
            return "the teacher"
        if model_key.startswith(STUDENT_PREFIX):
            return "the student"
        return role.words

    trained = STUDENT_PREFIX if role is Role.MGD_TRAINING else ""
    classifier = tuple(trained + k for k in CLASSIFIER_KEYS_OF.get(detector_of(model_shapes, trained), CLASSIFIER_KEYS))
    reinit = role.training and bool(differ) and all(mk in classifier for mk, _ in differ)
    if differ and not reinit:
        mk, ck = next(((m, c) for m, c in differ if m not in classifier), differ[0])
        more = f" ({len(differ)} tensors differ)" if len(differ) > 1 else ""
        all_classifiers = tuple({k for keys in CLASSIFIER_KEYS_OF.values() for k in keys})
        if all(m.endswith(all_classifiers) for m, _ in differ):
            why = ("the classifier is for another number of classes; "
                   + ("a teacher's classifier is never re-initialised: train a teacher on this "
                      "label set" if mk.startswith(TEACHER_PREFIX) else
                      "an evaluation needs a network trained on this label set"))
        else:
            why = "it is not a checkpoint of this architecture"
        raise CheckpointError(f"{name} does not fit {net_of(mk)}: tensor {ck!r} has shape "
                              f"{_shape_text(tuple(ckpt_shapes[ck]))} in the file and "
                              f"{_shape_text(tuple(model_shapes[mk]))} in the model{more}; {why}")

    if role is Role.RETINANET_TRAINING:
        required: List[str] = []  # ImageNet backbone weights into a fresh detector: allowed
    elif role is Role.MGD_TRAINING:  # the whole teacher, and the student's backbone (the merge's two halves)
        required = [k for k in model_shapes
                    if k.startswith((TEACHER_PREFIX, STUDENT_PREFIX + D2_BACKBONE_PREFIX))]
    else:
        required = list(model_shapes)
    missing = sorted(k for k in required if k not in pairs and not _is_config_buffer(k))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        if not role.training:
            whose = role.words
        elif missing[0].startswith(TEACHER_PREFIX):
            whose = "the teacher, which MGD training needs whole"
        else:
            whose = "the student's backbone, which MGD training starts from (make merge)"
        raise CheckpointError(f"{name} lacks tensor {missing[0]!r}{more} of {whose}; pass a "
                              "complete checkpoint of that network")
    return sorted({ck for _, ck in differ}) if reinit else []


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
