"""What a checkpoint holds, read from its key names and shapes: its kind (MGD distillation,
detector, bare backbone, unconverted torchvision), the detector whose head it holds, and the
per-detector tables (classifier keys, the config key of the class count) that the rules of
:mod:`.strict` and :mod:`.load_plan` compare against.
"""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Tuple

from .format import STUDENT_PREFIX, TEACHER_PREFIX

__all__ = [
    "CLASSIFIER_KEYS",
    "CLASSIFIER_KEYS_OF",
    "DETECTOR_HEADS",
    "NUM_CLASSES_KEY",
    "Shapes",
    "checkpoint_kind",
    "detector_of",
    "shapes_of",
    "strip_prefix",
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
