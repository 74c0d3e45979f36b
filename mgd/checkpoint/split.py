"""The split of an MGD distillation checkpoint into one Detectron2 network (the student, or
the teacher with ``eval_teacher``): what ``make convert-all`` and
``scripts/convert-output-to-d2.py`` run. :mod:`.inputs` decides whether the file holds that
network; :mod:`.format` knows the prefixes. (Apart from both, so that neither imports the other.)
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Dict, Mapping, Tuple

if TYPE_CHECKING:
    import numpy as np

from .format import STUDENT_PREFIX, TEACHER_PREFIX
from . import inputs  # the rules, looked up at each call
from .loading import extract_state_dict, is_random_init, load_checkpoint_object, to_numpy
from .roles import Role
from .writing import check_output_path, human_size, save_d2_pickle

__all__ = ["split_distilled", "convert_distilled"]


def split_distilled(sd: Mapping[str, Any], path="checkpoint", eval_teacher: bool = False
                    ) -> Tuple[Dict[str, "np.ndarray"], Dict[str, int]]:
    """Keep ``s_net.*`` (or ``t_net.*``) keys without the prefix, values as numpy.

    Returns (kept, dropped counts by group).
    """
    inputs.check_split(sd, path, Role.TEACHER if eval_teacher else Role.STUDENT)
    prefix = TEACHER_PREFIX if eval_teacher else STUDENT_PREFIX
    kept = {k[len(prefix):]: to_numpy(v) for k, v in sd.items() if k.startswith(prefix)}
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
