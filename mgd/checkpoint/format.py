"""The teacher/student checkpoint layout of MGD: ResNet depth from key names, validation,
merge of a teacher RetinaNet and a student backbone, and the split back.

A merged (distillation) checkpoint holds ``t_net.<teacher RetinaNet key>`` and
``s_net.backbone.bottom_up.<converted torchvision key>``; MGD training writes
``t_net.*`` and ``s_net.*`` (the whole student RetinaNet).
"""

from __future__ import annotations

import collections
import re
from typing import TYPE_CHECKING, Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import numpy as np

from .errors import CheckpointError
from .loading import extract_state_dict, is_random_init, load_checkpoint_object, to_numpy
from .writing import check_output_path, human_size, save_d2_pickle

__all__ = [
    "TEACHER_PREFIX",
    "STUDENT_PREFIX",
    "STUDENT_BACKBONE_PREFIX",
    "D2_BACKBONE_PREFIX",
    "DEPTH_LAYOUTS",
    "resnet_layout",
    "resnet_depth",
    "layout_text",
    "validate_teacher",
    "validate_student",
    "check_roles",
    "merge_teacher_student",
    "split_distilled",
    "convert_distilled",
]

TEACHER_PREFIX = "t_net."
STUDENT_PREFIX = "s_net."
STUDENT_BACKBONE_PREFIX = "s_net.backbone.bottom_up."
D2_BACKBONE_PREFIX = "backbone.bottom_up."

# Blocks per stage res2..res5 -> depth, for basic blocks and for bottlenecks.
_BASIC_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}
_BOTTLENECK_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
DEPTH_LAYOUTS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False),
                 50: ((3, 4, 6, 3), True), 101: ((3, 4, 23, 3), True),
                 152: ((3, 8, 36, 3), True)}


_BLOCK_RE = re.compile(r"^res([2-5])\.(\d+)\.")


def resnet_layout(keys: Iterable[str], prefix: str = "") -> Optional[Tuple[Tuple[int, ...], bool]]:
    """Blocks per stage res2..res5 and whether blocks are bottlenecks, from key names.

    ``prefix`` is stripped first (e.g. ``"backbone.bottom_up."``). Returns None when the keys
    do not describe a Detectron2-style ResNet (no ``resN.i.`` keys).
    """
    blocks: Dict[int, set] = {2: set(), 3: set(), 4: set(), 5: set()}
    bottleneck = False
    found = False
    for key in keys:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        m = _BLOCK_RE.match(rest)
        if not m:
            continue
        found = True
        blocks[int(m.group(1))].add(int(m.group(2)))
        if rest[m.end():].startswith("conv3."):
            bottleneck = True
    if not found:
        return None
    return tuple(len(blocks[s]) for s in (2, 3, 4, 5)), bottleneck


def resnet_depth(keys: Iterable[str], prefix: str = "") -> Optional[int]:
    """The ResNet depth (18, 34, 50, 101, 152) read from key names, or None if unknown."""
    layout = resnet_layout(keys, prefix)
    if layout is None:
        return None
    counts, bottleneck = layout
    return (_BOTTLENECK_DEPTHS if bottleneck else _BASIC_DEPTHS).get(counts)


def layout_text(keys, prefix="") -> str:
    layout = resnet_layout(keys, prefix)
    if layout is None:
        return "no ResNet stages"
    counts, bottleneck = layout
    depth = (_BOTTLENECK_DEPTHS if bottleneck else _BASIC_DEPTHS).get(counts)
    kind = "bottleneck" if bottleneck else "basic"
    name = f"ResNet-{depth}" if depth else "an unknown ResNet"
    return f"{name} ({kind} blocks {list(counts)} per stage)"


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


def _sample(keys: Sequence[str], n: int = 2) -> str:
    keys = sorted(keys)
    return ", ".join(repr(k) for k in keys[:n]) + (", ..." if len(keys) > n else "")


def validate_teacher(sd: Mapping[str, Any], path, depth: Optional[int] = None) -> Optional[int]:
    """Check that ``sd`` is a Detectron2 RetinaNet; return its backbone depth (or None)."""
    path = str(path)
    keys = list(sd)
    if any(k.startswith((TEACHER_PREFIX, STUDENT_PREFIX)) for k in keys):
        raise CheckpointError(f"teacher {path!r} is already a distillation checkpoint "
                              "(t_net./s_net. keys); extract the teacher first with "
                              "scripts/convert-output-to-d2.py IN OUT --eval-teacher")
    if resnet_layout(keys) is not None or any(k.startswith("layer1.") for k in keys):
        raise CheckpointError(f"teacher {path!r} is a bare ResNet backbone, not a RetinaNet; "
                              "pass the base training's output (e.g. model_final.pth of "
                              "`make base DEPTH=50`)")
    has_backbone = any(k.startswith(D2_BACKBONE_PREFIX) for k in keys)
    has_head = any(k.startswith("head.") for k in keys)
    if not (has_backbone and has_head):
        missing = " and ".join(n for n, ok in (("backbone.bottom_up.*", has_backbone),
                                                ("head.*", has_head)) if not ok)
        raise CheckpointError(f"teacher {path!r} does not look like a Detectron2 RetinaNet "
                              f"(no {missing} keys; it has e.g. {_sample(keys)}); pass the "
                              "base RetinaNet training's checkpoint")
    if resnet_layout(keys, D2_BACKBONE_PREFIX) is None:
        raise CheckpointError(f"teacher {path!r} has no ResNet stages under "
                              "backbone.bottom_up.res2-5; pass a RetinaNet with a ResNet "
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


def merge_teacher_student(teacher: Mapping[str, Any], student: Mapping[str, Any]
                          ) -> Dict[str, "np.ndarray"]:
    """``t_net.<teacher key>`` and ``s_net.backbone.bottom_up.<student key>``, as numpy."""
    merged: Dict[str, Any] = {}
    for key, value in teacher.items():
        merged[TEACHER_PREFIX + key] = to_numpy(value)
    for key, value in student.items():
        merged[STUDENT_BACKBONE_PREFIX + key] = to_numpy(value)
    return merged


def split_distilled(sd: Mapping[str, Any], path="checkpoint", eval_teacher: bool = False
                    ) -> Tuple[Dict[str, "np.ndarray"], Dict[str, int]]:
    """Keep ``s_net.*`` (or ``t_net.*``) keys without the prefix, values as numpy.

    Returns (kept, dropped counts by group).
    """
    prefix = TEACHER_PREFIX if eval_teacher else STUDENT_PREFIX
    kept = {k[len(prefix):]: to_numpy(v) for k, v in sd.items() if k.startswith(prefix)}
    if not kept:
        role = "teacher (t_net.*)" if eval_teacher else "student (s_net.*)"
        other = STUDENT_PREFIX if eval_teacher else TEACHER_PREFIX
        if any(k.startswith(other) for k in sd):
            hint = ("drop --eval-teacher to extract the student" if eval_teacher
                    else "it holds only t_net.* keys; add --eval-teacher for the teacher")
        else:
            hint = ("it is not an MGD distillation checkpoint (keys like "
                    f"{_sample(list(sd))}); pass a checkpoint written by the MGD training")
        raise CheckpointError(f"{str(path)!r} has no {role} keys; {hint}")
    dropped: Dict[str, int] = collections.Counter()
    for k in sd:
        if not k.startswith(prefix):
            group = k.split(".", 1)[0] + "." if "." in k else k
            dropped[group] += 1
    return kept, dict(dropped)


def convert_distilled(src, dst, eval_teacher: bool = False) -> str:
    """Split one distillation checkpoint into a Detectron2 pickle; return a summary line."""
    check_output_path(dst, inputs=[src])
    obj = load_checkpoint_object(src, what="checkpoint")
    sd = extract_state_dict(obj, src, what="checkpoint")
    kept, dropped = split_distilled(sd, src, eval_teacher=eval_teacher)
    random_init = is_random_init(obj)
    size = save_d2_pickle(kept, dst, random_init=random_init)
    prefix = TEACHER_PREFIX if eval_teacher else STUDENT_PREFIX
    role = "teacher" if eval_teacher else "student"
    others = ", ".join(f"{g}* {n}" for g, n in sorted(dropped.items())) or "nothing"
    return (f"{src} -> {dst}: {len(kept)} {role} tensors ({prefix}* without the prefix), "
            f"{human_size(size)}; left out {others}"
            + ("; marked as descending from random init" if random_init else ""))

