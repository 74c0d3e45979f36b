"""Every tensor of a checkpoint against a built model's state dict, paired the way Detectron2's
loader will pair them (:func:`match_keys`: exact names, or its suffix heuristics), so that what
:func:`plan_load` accepts is what gets loaded.

Rules: any tensor whose shape differs from the model's is refused, except in a training that
fine-tunes a detector on another label set: a mismatch confined to the classification output
layer (:data:`.contents.CLASSIFIER_KEYS_OF`; the student's in an MGD run) re-initialises it.
Never for the teacher, never at evaluation. An MGD training needs the whole teacher
(``t_net.*``) and the student's whole backbone (``s_net.backbone.bottom_up.*``: its FPN and head
may be new); an evaluation needs every tensor of the evaluated network; a plain training may
start from ImageNet backbone weights (missing head keys are fine).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from .contents import CLASSIFIER_KEYS, CLASSIFIER_KEYS_OF, Shapes, detector_of
from .errors import CheckpointError
from .format import D2_BACKBONE_PREFIX, STUDENT_PREFIX, TEACHER_PREFIX
from .roles import Role, _as_role

__all__ = [
    "match_keys",
    "plan_load",
]

# derived from the config, never meaningful in a file
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")
_CONFIG_BUFFER_PARTS = ("anchor_generator.",)


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

