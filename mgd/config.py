"""MGD configuration for Detectron2: ``add_mgd_config`` and the teacher/student derivation.

This is Detectron2 glue that does not import Detectron2: it edits the config object it is given
(new nodes of that object's own class), and ``import mgd`` does not import it.

:func:`add_mgd_config` adds the ``MGD`` node, ``SOLVER.AMP`` (Detectron2's later key; the pin
lacks it) and ``MODEL.RESNETS.STAGE_LAST_NORM``; each key is explained beside its default there,
and the options a study or an experiment sets are tabled in docs/mgd.md. The defaults are the
original's COCO 1x setting; the distillation defaults (positions, ignored positions, loss
factors, reducer) are defined once, in :mod:`mgd.defaults`. Every key Detectron2 already has
keeps upstream's default; the YAMLs carry their own values (``INPUT.FORMAT: "RGB"`` for the
torchvision weights everywhere, ``SOLVER.NESTEROV: True`` in the MGD ones, as the original).

The two networks' configs are clones of the full config with only the ``MGD.TEACHER`` /
``MGD.STUDENT`` keys replaced (:func:`derive_net_config`); the shared model keys (RETINANET, RPN,
ROI_HEADS, ANCHOR_GENERATOR, FPN, ...) come from the full config. Neither net's settings can
leak into the other's.
"""
from typing import List, Optional

from .defaults import DEFAULT_IGNORE_INDS, DEFAULT_LOSS_FACTORS, DEFAULT_POSITION_NAMES, DEFAULT_REDUCER

#: values of MGD.ASSIGNMENT and MGD.MATCHING_DATA
ASSIGNMENTS = ("matching", "random")
MATCHING_DATA = ("training", "separate")

__all__ = [
    "ASSIGNMENTS",
    "MATCHING_DATA",
    "add_mgd_config",
    "derive_net_config",
    "teacher_config",
    "student_config",
    "is_mgd_config",
    "distillation_divisor",
    "MGD_META_ARCHITECTURE",
    "MGD_META_ARCHITECTURES",
    "DETECTORS",
    "detector_pair_problem",
    "detector_name",
    "class_count_keys",
    "num_classes",
    "MGD_BACKBONE",
    "TORCHVISION_PIXEL_MEAN",
    "TORCHVISION_PIXEL_STD",
    "SYNC_BN_NORM",
]

MGD_META_ARCHITECTURE = "MGDRetinaNet"
#: the distilling meta-architectures: RetinaNet to RetinaNet (the paper's), and any pair of DETECTORS
MGD_META_ARCHITECTURES = (MGD_META_ARCHITECTURE, "MGDDetector")
MGD_BACKBONE = "build_mgd_retinanet_resnet_fpn_backbone"
#: the detectors a teacher or student may be (MGD.<NET>.META_ARCHITECTURE) and the ResNet-FPN
#: backbone each is built on: RetinaNet's FPN gives P3-P7, GeneralizedRCNN's P2-P6
DETECTORS = {"RetinaNet": MGD_BACKBONE, "GeneralizedRCNN": "build_mgd_resnet_fpn_backbone"}
#: positions a detector's backbone does not have (GeneralizedRCNN's FPN ends at P6)
ABSENT_POSITIONS = {"RetinaNet": (), "GeneralizedRCNN": ("p7",)}
TORCHVISION_PIXEL_MEAN = [123.675, 116.28, 103.53]
TORCHVISION_PIXEL_STD = [58.395, 57.12, 57.375]
#: Detectron2's get_norm name of the original's synchronised BN (MGD.SYNC_BN)
SYNC_BN_NORM = "naiveSyncBN"

# (MGD.<NET> key, where it goes in the derived RetinaNet config)
_NET_KEYS = (
    ("DEPTH", ("MODEL", "RESNETS", "DEPTH")),
    ("RES2_OUT_CHANNELS", ("MODEL", "RESNETS", "RES2_OUT_CHANNELS")),
    ("STRIDE_IN_1X1", ("MODEL", "RESNETS", "STRIDE_IN_1X1")),
    ("FREEZE_AT", ("MODEL", "BACKBONE", "FREEZE_AT")),
    ("NORM", ("MODEL", "RESNETS", "NORM")),
    ("STAGE_LAST_NORM", ("MODEL", "RESNETS", "STAGE_LAST_NORM")),
    ("PIXEL_MEAN", ("MODEL", "PIXEL_MEAN")),
    ("PIXEL_STD", ("MODEL", "PIXEL_STD")),
)


def _net_node(node_type, depth, res2_out_channels, freeze_at, stage_last_norm):
    node = node_type()
    node.META_ARCHITECTURE = "RetinaNet"
    node.DEPTH = depth
    node.RES2_OUT_CHANNELS = res2_out_channels
    node.STRIDE_IN_1X1 = False
    node.FREEZE_AT = freeze_at
    node.NORM = "FrozenBN"
    node.STAGE_LAST_NORM = stage_last_norm
    node.PIXEL_MEAN = list(TORCHVISION_PIXEL_MEAN)
    node.PIXEL_STD = list(TORCHVISION_PIXEL_STD)
    return node


def add_mgd_config(cfg):
    """Add the MGD keys (each explained at its default below) to a Detectron2 config, in place. Returns cfg. New nodes
    are of the config's own class, so this module does not import Detectron2."""
    node_type = type(cfg)
    # the norm of each stage's last block of the build_mgd_* backbones ("" = the stage's own)
    cfg.MODEL.RESNETS.STAGE_LAST_NORM = ""
    if "AMP" not in cfg.SOLVER:  # Detectron2's later convention; absent at the pin
        cfg.SOLVER.AMP = node_type({"ENABLED": False})
    # the autocast dtype: "auto" = float16 (with a GradScaler) on CUDA, bfloat16 on CPU | "float16" | "bfloat16"
    cfg.SOLVER.AMP.PRECISION = "auto"

    cfg.MGD = node_type()
    # how the teacher's channels are reduced onto the student's: "amp" | "rd" | "sp" | "sm"
    cfg.MGD.REDUCER = DEFAULT_REDUCER
    # positions not distilled: indices into [c2, c3, c4, c5, p3, p4, p5, p6, p7] (mgd.defaults)
    cfg.MGD.IGNORE_INDS = list(DEFAULT_IGNORE_INDS)
    # True: the norms MGD adds to the student (the distiller's and, with STUDENT.STAGE_LAST_NORM
    # "GN", the stage-last ones) become the original's synchronised BN (SYNC_BN_NORM)
    cfg.MGD.SYNC_BN = False
    # distil the pre-ReLU taps (True) or their ReLU (False; c positions)
    cfg.MGD.PRERELU = True
    # the schedule (mgd.schedule): a matching every UPDATE_FREQ[k] iterations, k = number of
    # UPDATE_SLOW_STEP entries passed; each solved from UPDATE_ITER + 1 batches of the reference's
    # per-GPU batch, (UPDATE_ITER + 1) x IMS_PER_BATCH / REFERENCE_WORLD_SIZE images (plan_matching_pass)
    cfg.MGD.UPDATE_FREQ = [5000, 31000]
    cfg.MGD.UPDATE_SLOW_STEP = [20000]
    cfg.MGD.UPDATE_ITER = 1000
    # True: a resumed run recomputes the matching at its first iteration (the original's
    # behaviour, which saved no assignment); False: it continues with its checkpoint's
    cfg.MGD.REMATCH_ON_RESUME = False
    # "all": each matching solved from every rank's images (the same count at any process
    # count); "rank0": rank 0's alone (the original's rule)
    cfg.MGD.MATCHING_RANKS = "all"
    # the distillation loss's weight; 0 is a study's control: everything MGD does runs (teacher
    # forward, matchings, the loss computed and logged) but the loss is not trained on
    cfg.MGD.LOSS_WEIGHT = 1.0
    # the iteration from which the distillation loss is computed and logged but not trained on
    # (0: trained on for the whole run)
    cfg.MGD.DISTILL_UNTIL = 0
    # every N iterations (N - 1, 2N - 1, ...), log the detection and distillation gradient norms
    # on the student's bottom-up ResNet and their cosine (two extra backward passes; 0: never)
    cfg.MGD.GRAD_NORM_PERIOD = 0
    # "matching" (solved on the schedule) | "random" (the paper's ablation: drawn once from the
    # run's seed at its first iteration, never re-solved; no matching passes)
    cfg.MGD.ASSIGNMENT = "matching"
    # where the matching passes draw batches: "training" (the original's: the training stream)
    # | "separate" (their own stream and seed: the training batches are a plain run's)
    cfg.MGD.MATCHING_DATA = "training"
    # nine per-position divisors of the loss
    cfg.MGD.LOSS_FACTORS = list(DEFAULT_LOSS_FACTORS)
    # The published run: 8 GPUs. Each process divides its summed distillation loss by
    # IMS_PER_BATCH * REFERENCE_WORLD_SIZE / world_size (distillation_divisor; 0: the original
    # code's rule, IMS_PER_BATCH alone).
    cfg.MGD.REFERENCE_WORLD_SIZE = 8
    # a teacher and a student of different META_ARCHITECTUREs are refused unless True (MGD
    # distils the backbones either way)
    cfg.MGD.ALLOW_MIXED_DETECTORS = False
    # Each net: META_ARCHITECTURE (a key of DETECTORS), DEPTH, RES2_OUT_CHANNELS, STRIDE_IN_1X1,
    # FREEZE_AT, NORM, STAGE_LAST_NORM, PIXEL_MEAN, PIXEL_STD (_NET_KEYS: where each goes). The
    # teacher is frozen whatever its FREEZE_AT, which only decides (as in its base training)
    # which stages carry the stage-last norm.
    cfg.MGD.TEACHER = _net_node(node_type, 50, 256, 2, "")
    cfg.MGD.STUDENT = _net_node(node_type, 18, 64, 1, "GN")
    return cfg


def is_mgd_config(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE in MGD_META_ARCHITECTURES


def detector_name(cfg, role: Optional[str] = None) -> Optional[str]:
    """The detector the config builds, as checkpoints name them (:data:`mgd.checkpoint.DETECTOR_HEADS`):
    "RetinaNet", "Faster R-CNN" or "Mask R-CNN" (``MODEL.MASK_ON``); for ``role`` "teacher" /
    "student" of an MGD config, that network's; None for another META_ARCHITECTURE."""
    arch = cfg.MGD[role.upper()].META_ARCHITECTURE if role else cfg.MODEL.META_ARCHITECTURE
    if arch == "GeneralizedRCNN":
        return "Mask R-CNN" if cfg.MODEL.MASK_ON else "Faster R-CNN"
    return "RetinaNet" if arch == "RetinaNet" else None


def num_classes(cfg, detector: Optional[str]) -> int:
    """The class count of ``detector`` (:func:`detector_name`) in ``cfg``."""
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES if detector in ("Faster R-CNN", "Mask R-CNN") else cfg.MODEL.RETINANET.NUM_CLASSES


def class_count_keys(cfg) -> List[str]:
    """The config keys holding the class counts of the detectors a run builds (both networks of
    an MGD config, or the model): "MODEL.RETINANET.NUM_CLASSES" and/or "MODEL.ROI_HEADS.NUM_CLASSES"."""
    detectors = [detector_name(cfg, "teacher"), detector_name(cfg, "student")] if is_mgd_config(cfg) else [detector_name(cfg)]
    keys = ["MODEL.ROI_HEADS.NUM_CLASSES" if d in ("Faster R-CNN", "Mask R-CNN") else "MODEL.RETINANET.NUM_CLASSES"
            for d in detectors]
    return list(dict.fromkeys(keys))


def detector_pair_problem(cfg, required: Optional[str] = None) -> Optional[str]:
    """What is wrong with the teacher / student META_ARCHITECTUREs of an MGD config, or None.

    Each must be a key of :data:`DETECTORS`; with ``required`` (MGDRetinaNet: "RetinaNet")
    both must be it; they must be the same unless ``MGD.ALLOW_MIXED_DETECTORS``.
    """
    teacher, student = cfg.MGD.TEACHER.META_ARCHITECTURE, cfg.MGD.STUDENT.META_ARCHITECTURE
    for role, arch in (("TEACHER", teacher), ("STUDENT", student)):
        if arch not in DETECTORS:
            return (f"MGD.{role}.META_ARCHITECTURE {arch!r} is not a detector MGD can distil "
                    f"(one of {', '.join(DETECTORS)})")
        if required and arch != required:
            return (f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE} distils {required}s only, but "
                    f"MGD.{role}.META_ARCHITECTURE is {arch!r}: use MODEL.META_ARCHITECTURE MGDDetector")
    if teacher != student and not cfg.MGD.ALLOW_MIXED_DETECTORS:
        return (f"the teacher is a {teacher} and the student a {student} (MGD.TEACHER/STUDENT.META_ARCHITECTURE): "
                "set MGD.ALLOW_MIXED_DETECTORS True to distil across detectors")
    for arch in dict.fromkeys((teacher, student)):
        absent = [name for name in ABSENT_POSITIONS[arch] if DEFAULT_POSITION_NAMES.index(name) not in cfg.MGD.IGNORE_INDS]
        if absent:
            return (f"position {', '.join(absent)} is distilled (not in MGD.IGNORE_INDS) but a {arch} has no such "
                    f"feature: add {', '.join(str(DEFAULT_POSITION_NAMES.index(n)) for n in absent)} to MGD.IGNORE_INDS")
    return None


def distillation_divisor(ims_per_batch: int, reference_world_size: int, world_size: int) -> float:
    """What each process divides its summed per-position distillation losses by.

    The original divided by the global batch ``ims_per_batch`` on each of its 8 GPUs, and
    DDP then averaged the gradients over them: each image's distillation gradient was
    1 / (ims_per_batch * 8), while RetinaNet's detection losses are normalised per process.
    Dividing by ``ims_per_batch * reference_world_size / world_size`` keeps that balance at
    any ``world_size`` (process count) and batch size. ``reference_world_size`` 0 is the
    original code's rule: divide by ``ims_per_batch`` alone (8 / world_size times harder
    than the published run when world_size != 8).
    """
    if ims_per_batch <= 0 or world_size <= 0:
        raise ValueError(f"ims_per_batch and world_size must be > 0, got {ims_per_batch}, {world_size}")
    if reference_world_size < 0:
        raise ValueError(f"MGD.REFERENCE_WORLD_SIZE must be >= 0, got {reference_world_size}")
    if reference_world_size == 0:
        return float(ims_per_batch)
    return ims_per_batch * reference_world_size / world_size


def derive_net_config(cfg, role: str):
    """The plain detector config of the teacher (role "teacher") or student ("student").

    A clone of ``cfg`` with the network's META_ARCHITECTURE, its MGD backbone
    (:data:`DETECTORS`), and the keys of
    ``MGD.TEACHER`` / ``MGD.STUDENT`` written to their MODEL.* places. With ``MGD.SYNC_BN``
    a student stage-last norm of "GN" becomes "naiveSyncBN": Detectron2's NaiveSyncBatchNorm,
    what the original's "SyncBN" was on the PyTorch of its time (<= 1.5; later Detectron2
    maps "SyncBN" to ``nn.SyncBatchNorm``, which weights each rank by its element count).
    """
    if role not in ("teacher", "student"):
        raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")
    node = cfg.MGD.TEACHER if role == "teacher" else cfg.MGD.STUDENT
    out = cfg.clone()
    out.defrost()
    if node.META_ARCHITECTURE not in DETECTORS:
        raise ValueError(f"MGD.{role.upper()}.META_ARCHITECTURE {node.META_ARCHITECTURE!r} is not one of "
                         f"{', '.join(DETECTORS)}")
    out.MODEL.META_ARCHITECTURE = node.META_ARCHITECTURE
    out.MODEL.BACKBONE.NAME = DETECTORS[node.META_ARCHITECTURE]
    for key, path in _NET_KEYS:
        parent = out
        for part in path[:-1]:
            parent = parent[part]
        value = node[key]
        parent[path[-1]] = list(value) if isinstance(value, (list, tuple)) else value
    if role == "student" and cfg.MGD.SYNC_BN and out.MODEL.RESNETS.STAGE_LAST_NORM == "GN":
        out.MODEL.RESNETS.STAGE_LAST_NORM = SYNC_BN_NORM
    out.MODEL.WEIGHTS = ""
    out.freeze()
    return out


def teacher_config(cfg):
    return derive_net_config(cfg, "teacher")


def student_config(cfg):
    return derive_net_config(cfg, "student")
