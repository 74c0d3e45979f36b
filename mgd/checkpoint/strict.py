"""Which checkpoint may start which run: refusals where a mismatch would be a wrong answer.

Two levels, both on key names and shapes only (no framework):

* :func:`check_checkpoint_role` - the kind of file (teacher+student distillation file,
  detector, bare backbone), the ResNet depth of each net read from its keys, and the
  classifier's class count, against what a run expects. Runs before any model is built.
* :func:`plan_load` - every tensor against the model's state dict, matched the way
  Detectron2's loader will match them (exact names, or its suffix heuristics); returns the
  classifier keys to re-initialise when that is the only (allowed) difference.

Rules (roles: ``"train"``, ``"eval-student"``, ``"eval-teacher"``):

* any tensor whose shape differs from the model's is refused, except a training that
  fine-tunes a detector on another label set: a mismatch confined to the classification
  output layer (``head.cls_score.*``; the student's in an MGD run) re-initialises it. Never
  for the teacher, never at evaluation;
* a teacher where a student is expected, or the reverse (the depth is read from the keys);
* an MGD run needs the whole teacher (``t_net.*``) and the student's whole backbone
  (``s_net.backbone.bottom_up.*``: its FPN and head may be new); an evaluation needs every tensor of
  the evaluated network; a plain training may start from ImageNet backbone weights
  (missing head keys are fine).

Every refusal is a :class:`CheckpointError` whose one line names the file, the role and the
first mismatching tensor.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import CheckpointError
from .format import D2_BACKBONE_PREFIX, STUDENT_PREFIX, TEACHER_PREFIX, layout_text, resnet_depth

__all__ = [
    "ROLES",
    "CLASSIFIER_KEYS",
    "checkpoint_kind",
    "strip_prefix",
    "shapes_of",
    "check_checkpoint_role",
    "match_keys",
    "plan_load",
]

ROLES = ("train", "eval-student", "eval-teacher")
#: the classification output layer of a RetinaNet (the only layer a new label set changes)
CLASSIFIER_KEYS = ("head.cls_score.weight", "head.cls_score.bias")
# derived from the config, never meaningful in a file
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")
_CONFIG_BUFFER_PARTS = ("anchor_generator.",)

Shapes = Mapping[str, Tuple[int, ...]]


def shapes_of(state: Mapping[str, object]) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of a state dict of numpy arrays or torch tensors."""
    return {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}


def strip_prefix(state: Mapping[str, object], prefix: str) -> Dict[str, object]:
    """Keep the keys starting with ``prefix``, without it; unchanged if none does."""
    if not prefix or not any(k.startswith(prefix) for k in state):
        return dict(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def checkpoint_kind(keys: Iterable[str]) -> str:
    """``"distillation"`` (t_net./s_net.), ``"detector"`` (backbone./head.), ``"backbone"``
    (converted ResNet: stem./res2-5.), ``"torchvision"`` (unconverted: layer1.) or ``"unknown"``."""
    keys = list(keys)
    if any(k.startswith((TEACHER_PREFIX, STUDENT_PREFIX)) for k in keys):
        return "distillation"
    if any(k.startswith(("backbone.", "head.")) for k in keys):
        return "detector"
    if any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    if any(k.startswith(("stem.", "res2.", "res3.", "res4.", "res5.")) for k in keys):
        return "backbone"
    return "unknown"


def _net_words(role: str, mgd: bool) -> str:
    if role == "eval-teacher":
        return "the teacher being evaluated"
    if role == "eval-student":
        return "the student being evaluated" if mgd else "the RetinaNet being evaluated"
    return "the MGD teacher+student" if mgd else "the RetinaNet being trained"


def _classes(shapes: Shapes, prefix: str, num_anchors: Optional[int]) -> Optional[int]:
    bias = shapes.get(prefix + "head.cls_score.bias")
    if bias is None or not num_anchors or len(bias) != 1 or bias[0] % num_anchors:
        return None
    return bias[0] // num_anchors


def check_checkpoint_role(shapes: Shapes, path: str, role: str, *, mgd: bool,
                          depth: Optional[int], teacher_depth: Optional[int] = None,
                          num_classes: Optional[int] = None, num_anchors: Optional[int] = None,
                          what: str = "MODEL.WEIGHTS") -> None:
    """Refuse a checkpoint of the wrong kind, depth or class count for ``role``.

    Args:
        shapes: ``{key: shape}`` of the checkpoint (for an evaluation of an MGD config,
            after the ``s_net.``/``t_net.`` prefix is stripped, as the loader does).
        role: "train", "eval-student" or "eval-teacher".
        mgd: the config is an MGD (teacher+student) config.
        depth: the ResNet depth of the student (MGD training), of the evaluated net
            (evaluation) or of the model (plain training); None = not checked.
        teacher_depth: the teacher's depth (MGD training only).
        num_classes, num_anchors: the config's class count and anchors per position;
            checked where a classifier cannot be re-initialised (the teacher, evaluation).
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    name = f"{what} {path!r}"
    keys = list(shapes)
    kind = checkpoint_kind(keys)
    if kind == "torchvision":
        raise CheckpointError(f"{name} is an unconverted torchvision state dict (layer1.* keys); "
                              "convert it with detectron2/tools/convert-torchvision-to-d2.py "
                              "(make weights does)")
    if kind == "unknown":
        raise CheckpointError(f"{name} holds no ResNet, RetinaNet or MGD weights (keys like "
                              f"{', '.join(sorted(keys)[:2])}); pass a checkpoint of this project")

    if role == "train" and mgd:
        _check_mgd_training(shapes, name, kind, depth, teacher_depth, num_classes, num_anchors)
        return
    if kind == "distillation":
        if role == "train":
            raise CheckpointError(f"{name} is an MGD distillation checkpoint (t_net./s_net. keys); "
                                  "a plain RetinaNet training cannot start from it: extract one "
                                  "net first (scripts/convert-output-to-d2.py IN OUT.pkl "
                                  "[--eval-teacher])")
        raise CheckpointError(f"{name} is an MGD distillation checkpoint (t_net./s_net. keys) "
                              "but the config is a plain RetinaNet; evaluate it with the MGD "
                              "config (--eval-teacher for the teacher) or extract one net "
                              "(make convert-all)")

    who = _net_words(role, mgd)
    prefix = D2_BACKBONE_PREFIX if kind == "detector" else ""
    found = resnet_depth(keys, prefix)
    if role != "train" and not any(k.startswith("head.") for k in keys):
        hint = ("it looks like the merged input of `make distill`, not a trained network; "
                "evaluate the distillation's output (make convert-all, then "
                "model_final.pkl)" if kind == "detector" and mgd
                else "it is a backbone, not a trained RetinaNet")
        raise CheckpointError(f"{name} has no detection head (head.* keys) for {who}; {hint}")
    if depth is not None and found != depth:
        if role == "eval-student" and mgd:
            hint = ("a teacher where the student is expected? add --eval-teacher (make eval "
                    "EVAL_TEACHER=1 reads model_final.teacher.pkl) or pass the student's weights")
        elif role == "eval-teacher":
            hint = ("the student where the teacher is expected? drop --eval-teacher, or pass "
                    "the teacher's weights (model_final.teacher.pkl of make convert-all "
                    "EVAL_TEACHER=1)")
        elif role == "eval-student":
            hint = f"pass a RetinaNet-R{depth} checkpoint or a config of the file's depth"
        else:
            hint = (f"pass weights of that depth (e.g. weights/r-{depth}.pkl) or set "
                    "MODEL.RESNETS.DEPTH to the file's")
        raise CheckpointError(f"{name} is {layout_text(keys, prefix)}, but {who} is "
                              f"ResNet-{depth}; {hint}")
    if role != "train" and num_classes is not None:
        found_classes = _classes(shapes, "", num_anchors)
        if found_classes is not None and found_classes != num_classes:
            raise CheckpointError(f"{name} was trained for {found_classes} classes, but {who} has "
                                  f"MODEL.RETINANET.NUM_CLASSES {num_classes}; evaluate it on its "
                                  "own label set, or with a config of that class count")


def _check_mgd_training(shapes: Shapes, name: str, kind: str, student_depth: Optional[int],
                        teacher_depth: Optional[int], num_classes: Optional[int],
                        num_anchors: Optional[int]) -> None:
    keys = list(shapes)
    if kind != "distillation":
        what = {"detector": "a single RetinaNet", "backbone": "a bare ResNet backbone"}[kind]
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
    if not any(k.startswith(TEACHER_PREFIX + "head.") for k in keys):
        raise CheckpointError(f"{name}: its teacher (t_net.*) has no detection head "
                              "(t_net.head.*); the teacher must be a trained RetinaNet "
                              "(make base DEPTH=50, then make merge)")
    if num_classes is not None:
        found_classes = _classes(shapes, TEACHER_PREFIX, num_anchors)
        if found_classes is not None and found_classes != num_classes:
            raise CheckpointError(f"{name}: its teacher was trained for {found_classes} classes, "
                                  f"but the config has MODEL.RETINANET.NUM_CLASSES {num_classes}; "
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


def plan_load(model_shapes: Shapes, ckpt_shapes: Shapes, path: str, role: str, *,
              mgd: bool, heuristics: bool, what: str = "MODEL.WEIGHTS") -> List[str]:
    """Compare every tensor; refuse what must not load; return checkpoint keys to drop.

    The returned keys are the classifier's (``head.cls_score.*``, or the student's
    ``s_net.head.cls_score.*`` in an MGD run) when, in a training, they are the only tensors
    whose shapes differ: the caller leaves that layer at its initialisation. Anything else
    that differs, an incomplete teacher (MGD training) or an incomplete evaluated network
    raises :class:`CheckpointError`.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    name = f"{what} {path!r}"
    pairs = match_keys(sorted(model_shapes), sorted(ckpt_shapes), heuristics)
    differ = [(mk, ck) for mk, ck in pairs.items()
              if tuple(model_shapes[mk]) != tuple(ckpt_shapes[ck]) and not _is_config_buffer(mk)]

    def net_of(model_key: str) -> str:
        if model_key.startswith(TEACHER_PREFIX):
            return "the teacher"
        if model_key.startswith(STUDENT_PREFIX):
            return "the student"
        return _net_words(role, mgd)

    classifier = tuple((STUDENT_PREFIX if mgd and role == "train" else "") + k
                       for k in CLASSIFIER_KEYS)
    reinit = role == "train" and bool(differ) and all(mk in classifier for mk, _ in differ)
    if differ and not reinit:
        mk, ck = next(((m, c) for m, c in differ if m not in classifier), differ[0])
        more = f" ({len(differ)} tensors differ)" if len(differ) > 1 else ""
        if all(m.endswith(CLASSIFIER_KEYS) for m, _ in differ):
            why = ("the classifier is for another number of classes; "
                   + ("a teacher's classifier is never re-initialised: train a teacher on this "
                      "label set" if mk.startswith(TEACHER_PREFIX) else
                      "an evaluation needs a network trained on this label set"))
        else:
            why = "it is not a checkpoint of this architecture"
        raise CheckpointError(f"{name} does not fit {net_of(mk)}: tensor {ck!r} has shape "
                              f"{_shape_text(tuple(ckpt_shapes[ck]))} in the file and "
                              f"{_shape_text(tuple(model_shapes[mk]))} in the model{more}; {why}")

    if role == "train" and not mgd:
        required: List[str] = []  # ImageNet backbone weights into a fresh detector: allowed
    elif role == "train":  # the whole teacher, and the student's backbone (the merge's two halves)
        required = [k for k in model_shapes
                    if k.startswith((TEACHER_PREFIX, STUDENT_PREFIX + D2_BACKBONE_PREFIX))]
    else:
        required = list(model_shapes)
    missing = sorted(k for k in required if k not in pairs and not _is_config_buffer(k))
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        if role != "train":
            whose = _net_words(role, mgd)
        elif missing[0].startswith(TEACHER_PREFIX):
            whose = "the teacher, which MGD training needs whole"
        else:
            whose = "the student's backbone, which MGD training starts from (make merge)"
        raise CheckpointError(f"{name} lacks tensor {missing[0]!r}{more} of {whose}; pass a "
                              "complete checkpoint of that network")
    return sorted({ck for _, ck in differ}) if reinit else []
