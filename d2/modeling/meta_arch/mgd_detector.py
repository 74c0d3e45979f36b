"""MGDDetector: a frozen teacher detector distilling a student detector with MGD.

Registered in Detectron2's META_ARCH_REGISTRY (with :class:`MGDRetinaNet`, its RetinaNet-only
form, in ``mgd_retinanet``). The teacher and the student are each built by Detectron2 from their
own META_ARCHITECTURE (``MGD.TEACHER.META_ARCHITECTURE``, ``MGD.STUDENT.META_ARCHITECTURE``: a
RetinaNet or a GeneralizedRCNN: Faster / Mask R-CNN) on a ResNet-FPN built by
``build_mgd_*``; MGD acts on the bottom-up ResNet (and optionally the FPN outputs), never on a
head. Submodules (and so checkpoint prefixes): ``t_net`` (teacher; frozen, always in eval
mode), ``s_net`` (student) and ``distiller`` (:class:`mgd.distiller.MGDDistiller`: the student
norms per position, margins and matchings).

Cost per training step, compared with the original (which ran each network's bottom-up
twice and the teacher's whole inference, NMS included, only to drop it):

* the student runs ONE ordinary training forward; its taps (pre-ReLU outputs of each
  stage's last block, and the FPN outputs if a p position is distilled) are captured with
  forward hooks during that same forward;
* the teacher runs under ``no_grad`` only as far as the distilled positions need: its
  bottom-up ResNet by default, its FPN only when a p position is distilled, never its heads
  (RetinaNet's head; the RPN and ROI heads of a GeneralizedRCNN).

Numerics: under mixed precision (``SOLVER.AMP.ENABLED``; the trainer runs the forward under
``torch.autocast`` to ``amp_dtype(SOLVER.AMP.PRECISION)``) both networks' forwards are
autocast, while the distillation loss, the margins and the matching costs are computed in
float32 from float32 copies of the taps.

The matching pass (:meth:`accumulate_matching`) runs both networks the same way, in eval
mode, without grad. The trainer hook in ``detectron2.engine.mgd_hooks`` drives the schedule.
"""
import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.modeling.backbone.mgd_norms import sync_batch_norm
from detectron2.modeling.backbone.mgd_resnet import MGDResNet, prerelu_norm, tap_key
from detectron2.modeling.meta_arch.build import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from mgd.config import detector_pair_problem, distillation_divisor, student_config, teacher_config
from mgd.distiller import DEFAULT_POSITION_NAMES, MGDDistiller

__all__ = ["MGDDetector", "Position", "POSITIONS", "autocast", "amp_dtype", "AMP_PRECISIONS"]


@dataclass(frozen=True)
class Position:
    """One distillation position of a ResNet-FPN detector.

    Attributes:
        name: the position's name in configs, logs and checkpoints ("c2", "p3", ...).
        stage: the ResNet stage whose last block is tapped ("res2" ...), or "" for an FPN
            output.
        feature_key: the key of the feature in the backbone's outputs: the pre-ReLU tap
            ``resK_prerelu`` of a stage, or the FPN level ``pK``.
    """

    name: str
    stage: str
    feature_key: str

    @property
    def is_stage(self) -> bool:
        """True for a ResNet stage tap (its ReLU can be applied: ``MGD.PRERELU False``)."""
        return bool(self.stage)


def _stage(name: str, stage: str) -> Position:
    return Position(name, stage, tap_key(stage))


def _fpn(name: str) -> Position:
    return Position(name, "", name)


#: The positions of ``MGD.IGNORE_INDS``, in order (docs/mgd.md, "Positions"): stages' pre-ReLU taps, then FPN.
POSITIONS: Tuple[Position, ...] = (
    _stage("c2", "res2"), _stage("c3", "res3"), _stage("c4", "res4"), _stage("c5", "res5"),
    _fpn("p3"), _fpn("p4"), _fpn("p5"), _fpn("p6"), _fpn("p7"),
)
assert tuple(p.name for p in POSITIONS) == tuple(DEFAULT_POSITION_NAMES)


#: values of SOLVER.AMP.PRECISION
AMP_PRECISIONS = ("auto", "float16", "bfloat16")


def amp_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``SOLVER.AMP.PRECISION``: "auto" is float16 on CUDA (trained with
    a GradScaler), bfloat16 elsewhere (CPU: fast where the CPU has bfloat16 units)."""
    if precision not in AMP_PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION must be one of {', '.join(AMP_PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, precision)


def autocast(device: torch.device, enabled: bool, dtype: Optional[torch.dtype] = None):
    """``torch.autocast`` on ``device`` to ``dtype`` (default ``amp_dtype("auto", device)``).

    A no-op context when ``enabled`` is False.
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype or amp_dtype("auto", device))


def _float32(device: torch.device):
    """Leave any surrounding autocast: what runs inside computes in the tensors' own dtype."""
    return torch.autocast(device_type=device.type, enabled=False)


@META_ARCH_REGISTRY.register()
class MGDDetector(nn.Module):
    """A frozen teacher detector and a trainable student detector, distilled with MGD.

    Training forward: the student's own training losses (RetinaNet: ``loss_cls``,
    ``loss_box_reg``; GeneralizedRCNN: the RPN's and the ROI heads', ``loss_mask`` with Mask
    R-CNN) plus ``loss_distill``, the sum over the distilled positions of each position's loss
    divided by its ``MGD.LOSS_FACTORS`` entry, divided by :attr:`loss_divisor` (times
    ``MGD.LOSS_WEIGHT`` when it is not 1; with weight 0 it is computed without grad and logged
    as ``mgd/loss_distill_untrained``, and ``loss_distill`` is a constant 0). Inference: the
    student's (or, with :attr:`eval_teacher`, the teacher's) detections.
    """

    #: the META_ARCHITECTURE both networks must have (None: any of mgd.config.DETECTORS)
    required_detector: Optional[str] = None

    def __init__(self, cfg):
        """
        Args:
            cfg: an MGD config (``MODEL.META_ARCHITECTURE`` "MGDDetector" or "MGDRetinaNet");
                the two detectors are built from ``mgd.config.teacher_config(cfg)`` /
                ``student_config(cfg)``, each by its own META_ARCHITECTURE.
        """
        super().__init__()
        problem = detector_pair_problem(cfg, self.required_detector)
        if problem:
            raise ValueError(problem)
        t_cfg, s_cfg = teacher_config(cfg), student_config(cfg)
        self.t_net = META_ARCH_REGISTRY.get(t_cfg.MODEL.META_ARCHITECTURE)(t_cfg)
        self.s_net = META_ARCH_REGISTRY.get(s_cfg.MODEL.META_ARCHITECTURE)(s_cfg)
        for net, role in ((self.t_net, "teacher"), (self.s_net, "student")):
            if not isinstance(getattr(net.backbone, "bottom_up", None), MGDResNet):
                raise TypeError(f"the {role} backbone must be built by build_mgd_* (got "
                                f"{type(getattr(net.backbone, 'bottom_up', net.backbone)).__name__})")
        self.t_net.requires_grad_(False)
        self.t_net.eval()

        self.positions: Tuple[Position, ...] = POSITIONS
        ignored = set(cfg.MGD.IGNORE_INDS)
        self.distiller = MGDDistiller(
            self._channels(self.s_net, "student", ignored),
            self._channels(self.t_net, "teacher", ignored),
            reducer=cfg.MGD.REDUCER.lower(),
            ignore_inds=list(cfg.MGD.IGNORE_INDS),
            loss_factors=list(cfg.MGD.LOSS_FACTORS),
            norm=sync_batch_norm if cfg.MGD.SYNC_BN else "GN",
            position_names=[p.name for p in self.positions],
        )
        self.prerelu = bool(cfg.MGD.PRERELU)
        #: what the summed per-position losses are divided by (mgd.config.distillation_divisor)
        self.loss_divisor = distillation_divisor(
            cfg.SOLVER.IMS_PER_BATCH, cfg.MGD.REFERENCE_WORLD_SIZE, comm.get_world_size()
        )
        #: autocast the matching pass's forwards too (the training forward is autocast by the trainer)
        self.amp_enabled = bool(cfg.SOLVER.AMP.ENABLED)
        self.amp_dtype = amp_dtype(cfg.SOLVER.AMP.PRECISION, torch.device(cfg.MODEL.DEVICE))
        #: whose costs each matching is solved from under several processes (MGD.MATCHING_RANKS)
        self.matching_ranks = cfg.MGD.MATCHING_RANKS
        #: what ``loss_distill`` is multiplied by (MGD.LOSS_WEIGHT; 0: computed, not trained on)
        self.loss_weight = float(cfg.MGD.LOSS_WEIGHT)
        #: iteration from which the distillation is no longer trained on (MGD.DISTILL_UNTIL; 0: never)
        self.distill_until = int(cfg.MGD.DISTILL_UNTIL)
        #: log the gradients' norms every that many iterations (MGD.GRAD_NORM_PERIOD; 0: never)
        self.grad_norm_period = int(cfg.MGD.GRAD_NORM_PERIOD)
        self._distilled = [self.positions[i] for i in self.distiller.distilled_positions]
        self._wanted = {p.feature_key for p in self._distilled}
        # run the teacher's FPN only when one of its outputs is distilled
        self._need_fpn = any(not p.is_stage for p in self._distilled)
        #: evaluate the teacher instead of the student (``--eval-only --eval-teacher``)
        self.eval_teacher = False

    @property
    def position_names(self) -> Tuple[str, ...]:
        return tuple(p.name for p in self.positions)

    # -- structure ------------------------------------------------------------------------
    def _channels(self, net: nn.Module, role: str, ignored: Set[int]) -> List[int]:
        """Channels per position (0 for an ignored position the network lacks: a
        GeneralizedRCNN's FPN ends at p6, so p7 exists only for a RetinaNet)."""
        taps = net.backbone.bottom_up.tap_channels()
        fpn = {k: s.channels for k, s in net.backbone.output_shape().items()}
        features = {**fpn, **taps}
        out = []
        for i, p in enumerate(self.positions):
            if p.feature_key in features:
                out.append(features[p.feature_key])
            elif i in ignored:
                out.append(0)
            else:
                raise ValueError(f"position {p.name} is distilled (not in MGD.IGNORE_INDS) but the {role} "
                                 f"({type(net).__name__}) has no feature {p.feature_key!r} (it has "
                                 f"{', '.join(sorted(features))})")
        return out

    @property
    def device(self) -> torch.device:
        return self.s_net.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.t_net.eval()  # the teacher never leaves eval mode
        return self

    # -- feature taps ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _tapping(self, net: nn.Module) -> Iterator[Dict[str, Tensor]]:
        """Collect the wanted features of ``net``'s backbone during the forwards inside."""
        taps: Dict[str, Tensor] = {}
        wanted = self._wanted

        def grab(_module, _inputs, outputs):
            taps.update({k: v for k, v in outputs.items() if k in wanted})

        bottom_up = net.backbone.bottom_up
        handles = [bottom_up.register_forward_hook(grab)]
        if self._need_fpn:
            handles.append(net.backbone.register_forward_hook(grab))
        bottom_up.expose_taps = True
        try:
            yield taps
        finally:
            bottom_up.expose_taps = False
            for handle in handles:
                handle.remove()

    def _backbone_taps(self, net: nn.Module, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """Preprocess and run ``net``'s backbone only as far as the wanted features."""
        images = net.preprocess_image(batched_inputs)
        with self._tapping(net) as taps:
            if self._need_fpn:
                net.backbone(images.tensor)
            else:
                net.backbone.bottom_up(images.tensor)
        return taps

    def _position_list(self, taps: Dict[str, Tensor]) -> List[Optional[Tensor]]:
        """The distiller's input: one float32 feature [N, C, H, W] per position (None if ignored).

        Stage taps are ReLU'd here when ``MGD.PRERELU`` is False.
        """
        feats: List[Optional[Tensor]] = [None] * len(self.positions)
        for i in self.distiller.distilled_positions:
            position = self.positions[i]
            feat = taps[position.feature_key].float()
            if position.is_stage and not self.prerelu:
                feat = F.relu(feat)
            feats[i] = feat
        return feats

    # -- training / inference -------------------------------------------------------------
    def forward(self, batched_inputs: List[dict]):
        """
        Args:
            batched_inputs: Detectron2's list of dicts (``image`` [3, H, W], ``instances``
                for training), as for the student's detector.

        Returns:
            training: dict of scalar losses: the student's own training losses and
            ``loss_distill``; the per-position losses (divided by :attr:`loss_divisor`)
            go to the event storage as ``mgd/loss_<position>``.
            inference: the student's (teacher's with :attr:`eval_teacher`) list of
            ``{"instances": Instances}``.
        """
        if not self.training:
            return (self.t_net if self.eval_teacher else self.s_net)(batched_inputs)
        with self._tapping(self.s_net) as s_taps:
            losses = self.s_net(batched_inputs)
        with torch.no_grad():
            t_taps = self._backbone_taps(self.t_net, batched_inputs)
        storage = get_event_storage()
        # weight 0, or past MGD.DISTILL_UNTIL: computed and logged, no gradient reaches the student
        trained = self.loss_weight != 0 and not (self.distill_until and storage.iter >= self.distill_until)
        with _float32(self.device), torch.set_grad_enabled(trained):
            per_position = self.distiller(self._position_list(s_taps), self._position_list(t_taps))
        for name, value in per_position.items():
            storage.put_scalar(f"mgd/loss_{name}", value.detach().item() / self.loss_divisor)
        distill = sum(per_position.values()) / self.loss_divisor
        if not trained:
            storage.put_scalar("mgd/loss_distill_untrained", distill.item())
            distill = torch.zeros((), device=distill.device)
        elif self.loss_weight != 1:
            distill = distill * self.loss_weight
        losses["loss_distill"] = distill
        # on the last iteration of each period: the one Detectron2's writers log (every 20th: 19, 39, ...)
        if trained and self.grad_norm_period and (storage.iter + 1) % self.grad_norm_period == 0:
            self._log_gradient_norms(losses, storage)
        return losses

    def _log_gradient_norms(self, losses: Dict[str, Tensor], storage) -> None:
        """``mgd/grad_norm_detection``, ``mgd/grad_norm_distill`` (L2 norms over the student's
        trainable bottom-up parameters, of the gradients the step's losses give them, as summed
        by the trainer: before any AMP scaling or clipping) and ``mgd/grad_cosine`` (their
        cosine). Computed with ``autograd.grad`` (the graph is kept): ``.grad`` and the update
        are untouched."""
        params = [p for p in self.s_net.backbone.bottom_up.parameters() if p.requires_grad]
        detection = sum(v for k, v in losses.items() if k != "loss_distill")
        grads = {}
        for name, loss in (("detection", detection), ("distill", losses["loss_distill"])):
            parts = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            grads[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                                     for g, p in zip(parts, params)])
        norms = {name: g.norm() for name, g in grads.items()}
        for name, norm in norms.items():
            storage.put_scalar(f"mgd/grad_norm_{name}", norm.item(), smoothing_hint=False)
        denominator = (norms["detection"] * norms["distill"]).clamp_min(1e-30)
        # one value per period: the writers' 20-value median would mix up to 20 periods
        storage.put_scalar("mgd/grad_cosine", (grads["detection"] @ grads["distill"] / denominator).item(),
                           smoothing_hint=False)

    @torch.no_grad()
    def distillation_losses(self, batched_inputs: List[dict]) -> Dict[str, Tensor]:
        """Per-position losses of one batch (after factor, before :attr:`loss_divisor`).

        For the loss-factor probe; runs both backbones in the current mode, without grad.
        """
        s_taps, t_taps = self._both_taps(batched_inputs)
        with _float32(self.device):
            return self.distiller(self._position_list(s_taps), self._position_list(t_taps))

    # -- margins and matching (called by the trainer hook) --------------------------------
    def teacher_affines(self) -> List[Optional[Tuple[Tensor, Tensor]]]:
        """(gamma [tc], beta [tc]) of the teacher norm before each stage position's ReLU;
        None for FPN positions (a fresh norm: margins from gamma 1, beta 0)."""
        blocks = self.t_net.backbone.bottom_up.last_blocks()
        affines: List[Optional[Tuple[Tensor, Tensor]]] = []
        for p in self.positions:
            if p.is_stage:
                norm = prerelu_norm(blocks[p.stage])
                affines.append((norm.weight.detach().float(), norm.bias.detach().float()))
            else:
                affines.append(None)
        return affines

    def update_margins(self) -> None:
        """Recompute the teacher margins from its norms (at the start of a run and on resume)."""
        self.distiller.update_margins(self.teacher_affines())

    def reset_matching(self) -> None:
        self.distiller.reset_matching()

    @torch.no_grad()
    def accumulate_matching(self, batched_inputs: List[dict]) -> None:
        """Add one batch to the matching costs (call with the model in eval mode).

        The forwards are autocast under ``SOLVER.AMP.ENABLED``; the costs are float32.
        """
        s_taps, t_taps = self._both_taps(batched_inputs)
        with _float32(self.device):
            self.distiller.accumulate_matching(self._position_list(s_taps), self._position_list(t_taps))

    def finish_matching(self) -> Dict[str, float]:
        """Solve the assignments from the ranks of ``MGD.MATCHING_RANKS``; returns {position: mean
        matched cost (2 - 2 cos)}. ``distiller.last_statistic`` says from how many images."""
        return self.distiller.finish_matching(self.matching_ranks)

    def _both_taps(self, batched_inputs: List[dict]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        with autocast(self.device, self.amp_enabled, self.amp_dtype):
            return self._backbone_taps(self.s_net, batched_inputs), self._backbone_taps(self.t_net, batched_inputs)
