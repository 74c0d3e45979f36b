"""MGDRetinaNet: the paper's pairing, a frozen RetinaNet teacher distilling a RetinaNet student.

:class:`~detectron2.modeling.meta_arch.mgd_detector.MGDDetector` with both networks held to
RetinaNet, under the name the published configs and checkpoints carry
(``MODEL.META_ARCHITECTURE "MGDRetinaNet"``). Other detectors: ``"MGDDetector"``.
"""
from detectron2.modeling.meta_arch.build import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.mgd_detector import MGDDetector

__all__ = ["MGDRetinaNet"]


@META_ARCH_REGISTRY.register()
class MGDRetinaNet(MGDDetector):
    """MGDDetector whose teacher and student are RetinaNets (``MGD.*.META_ARCHITECTURE``)."""

    required_detector = "RetinaNet"
