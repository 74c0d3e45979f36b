"""The teacher/student checkpoint layout of MGD: the key prefixes (defined here, once), ResNet
depth from key names, and the merge of a teacher RetinaNet and a student backbone (the split
back is :mod:`.split`). Which file may be merged or split is decided in :mod:`.inputs`, which
may be loaded in :mod:`.strict` and :mod:`.load_plan`.

A merged (distillation) checkpoint holds ``t_net.<teacher RetinaNet key>`` and
``s_net.backbone.bottom_up.<converted torchvision key>``; MGD training writes
``t_net.*`` and ``s_net.*`` (the whole student RetinaNet).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Dict, Iterable, Mapping, Optional, Tuple

if TYPE_CHECKING:
    import numpy as np

from .loading import to_numpy

__all__ = [
    "TEACHER_PREFIX",
    "STUDENT_PREFIX",
    "STUDENT_BACKBONE_PREFIX",
    "D2_BACKBONE_PREFIX",
    "DEPTH_LAYOUTS",
    "resnet_layout",
    "resnet_depth",
    "layout_text",
    "merge_teacher_student",
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


def merge_teacher_student(teacher: Mapping[str, Any], student: Mapping[str, Any]
                          ) -> Dict[str, "np.ndarray"]:
    """``t_net.<teacher key>`` and ``s_net.backbone.bottom_up.<student key>``, as numpy."""
    merged: Dict[str, Any] = {}
    for key, value in teacher.items():
        merged[TEACHER_PREFIX + key] = to_numpy(value)
    for key, value in student.items():
        merged[STUDENT_BACKBONE_PREFIX + key] = to_numpy(value)
    return merged
