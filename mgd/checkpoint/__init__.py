"""Checkpoints of MGD as data: safe loading, the teacher/student format, atomic writing.

* :mod:`.loading` reads ``.pkl`` (restricted unpickling) and ``.pth``
  (``torch.load(weights_only=True)``) files without running code from them;
* :mod:`.format` knows the teacher/student layout (``t_net.*``, ``s_net.*``), reads a
  ResNet's depth from key names, validates and merges; :mod:`.split` splits one net back out;
* :mod:`.roles` names what a run asks of its weights (:class:`Role`), :mod:`.contents` reads
  what a file holds (kind, detector) from its keys; :mod:`.strict` decides which checkpoint may
  start which run (kind, detector, depth, classes), :mod:`.load_plan` which tensors load, and
  :mod:`.inputs` which files a merge or a split takes;
* :mod:`.writing` checks output paths early and writes atomically.

Every user-caused problem raises :class:`CheckpointError` with a one-line message.
Framework-free: needs numpy, and torch only for torch files or tensors; never Detectron2.
"""

from .errors import CheckpointError
from .format import (
    D2_BACKBONE_PREFIX,
    DEPTH_LAYOUTS,
    STUDENT_BACKBONE_PREFIX,
    STUDENT_PREFIX,
    TEACHER_PREFIX,
    layout_text,
    merge_teacher_student,
    resnet_depth,
    resnet_layout,
)
from .loading import (
    RANDOM_INIT_KEY,
    DisallowedGlobal,
    RestrictedUnpickler,
    extract_state_dict,
    is_random_init,
    load_checkpoint,
    load_checkpoint_object,
    restricted_loads,
    to_numpy,
)
from .contents import (
    CLASSIFIER_KEYS,
    CLASSIFIER_KEYS_OF,
    DETECTOR_HEADS,
    checkpoint_kind,
    detector_of,
    shapes_of,
    strip_prefix,
)
from .inputs import (
    check_distinct_inputs,
    check_merge_inputs,
    check_roles,
    check_split,
    validate_student,
    validate_teacher,
)
from .load_plan import match_keys, plan_load
from .roles import Role, check_weights_path, select_network
from .strict import check_checkpoint_role, check_model_load, check_weights_state
from .split import convert_distilled, split_distilled
from .writing import atomic_write, check_output_path, human_size, save_d2_pickle

__all__ = [
    "CheckpointError",
    "RestrictedUnpickler",
    "DisallowedGlobal",
    "restricted_loads",
    "load_checkpoint",
    "load_checkpoint_object",
    "extract_state_dict",
    "to_numpy",
    "RANDOM_INIT_KEY",
    "is_random_init",
    "check_output_path",
    "atomic_write",
    "save_d2_pickle",
    "human_size",
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
    "Role",
    "CLASSIFIER_KEYS",
    "CLASSIFIER_KEYS_OF",
    "DETECTOR_HEADS",
    "checkpoint_kind",
    "detector_of",
    "strip_prefix",
    "shapes_of",
    "check_checkpoint_role",
    "match_keys",
    "plan_load",
    "check_weights_path",
    "check_weights_state",
    "check_model_load",
    "select_network",
    "check_split",
    "check_merge_inputs",
    "check_distinct_inputs",
]
