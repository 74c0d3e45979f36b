"""MGDRetinaNet: a frozen RetinaNet teacher distilling a RetinaNet student with MGD.

Registered in Detectron2's META_ARCH_REGISTRY. Submodules (and so checkpoint prefixes):
``t_net`` (teacher RetinaNet; frozen, always in eval mode), ``s_net`` (student RetinaNet)
and ``distiller`` (:class:`mgd.distiller.MGDDistiller`: the student norms per position,
margins and matchings).

Cost per training step, compared with the original (which ran each network's bottom-up
twice and the teacher's whole inference, NMS included, only to drop it):

* the student runs ONE ordinary training forward; its taps (pre-ReLU outputs of each
  stage's last block, and the FPN outputs if a p position is distilled) are captured with
  forward hooks during that same forward;
* the teacher runs under ``no_grad`` only as far as the distilled positions need: its
  bottom-up ResNet by default, its FPN only when a p position is distilled, never its head.

The matching pass (:meth:`accumulate_matching`) runs both networks the same way, in eval
mode, without grad. The trainer hook in ``detectron2.engine.mgd_hooks`` drives the schedule.
"""
import contextlib
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling.backbone.mgd_resnet import MGDResNet, prerelu_norm, tap_key
from detectron2.modeling.meta_arch.build import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.utils.events import get_event_storage

from mgd.config import student_config, teacher_config
from mgd.distiller import DEFAULT_POSITION_NAMES, MGDDistiller

__all__ = ["MGDRetinaNet", "position_keys"]


def position_keys(position_names=DEFAULT_POSITION_NAMES) -> List[str]:
    """Feature key of each position: "cK" -> the tap "resK_prerelu", "pK" -> FPN output "pK"."""
    keys = []
    for name in position_names:
        if name[0] == "c":
            keys.append(tap_key("res" + name[1:]))
        elif name[0] == "p":
            keys.append(name)
        else:
            raise ValueError(f"unknown position {name!r}: expected cK (ResNet stage) or pK (FPN)")
    return keys


@META_ARCH_REGISTRY.register()
class MGDRetinaNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.t_net = RetinaNet(teacher_config(cfg))
        self.s_net = RetinaNet(student_config(cfg))
        for net, role in ((self.t_net, "teacher"), (self.s_net, "student")):
            if not isinstance(net.backbone.bottom_up, MGDResNet):
                raise TypeError(f"the {role} backbone must be built by build_mgd_* (got "
                                f"{type(net.backbone.bottom_up).__name__})")
        self.t_net.requires_grad_(False)
        self.t_net.eval()

        self.position_names = tuple(DEFAULT_POSITION_NAMES)
        self._keys = position_keys(self.position_names)
        self.distiller = MGDDistiller(
            self._channels(self.s_net),
            self._channels(self.t_net),
            reducer=cfg.MGD.REDUCER.lower(),
            ignore_inds=list(cfg.MGD.IGNORE_INDS),
            loss_factors=list(cfg.MGD.LOSS_FACTORS),
            norm="SyncBN" if cfg.MGD.SYNC_BN else "GN",
            position_names=self.position_names,
        )
        self.prerelu = bool(cfg.MGD.PRERELU)
        self.ims_per_batch = int(cfg.SOLVER.IMS_PER_BATCH)
        distilled = self.distiller.distilled_positions
        self._wanted = {self._keys[i] for i in distilled}
        # run the FPN only when one of its outputs is distilled
        self._need_fpn = any(not self._keys[i].endswith("_prerelu") for i in distilled)
        #: evaluate the teacher instead of the student (``--eval-only --eval-teacher``)
        self.eval_teacher = False

    # -- structure ------------------------------------------------------------------------
    def _channels(self, net) -> List[int]:
        taps = net.backbone.bottom_up.tap_channels()
        fpn = {k: s.channels for k, s in net.backbone.output_shape().items()}
        out = []
        for name, key in zip(self.position_names, self._keys):
            if key not in taps and key not in fpn:
                raise ValueError(f"position {name}: the network has no feature {key!r}")
            out.append(taps.get(key, fpn.get(key)))
        return out

    @property
    def device(self):
        return self.s_net.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.t_net.eval()  # the teacher never leaves eval mode
        return self

    # -- feature taps ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _tapping(self, net):
        """Collect the wanted features of ``net``'s backbone during the forwards inside."""
        taps: Dict[str, torch.Tensor] = {}
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

    def _backbone_taps(self, net, batched_inputs) -> Dict[str, torch.Tensor]:
        """Preprocess and run ``net``'s backbone only as far as the wanted features."""
        images = net.preprocess_image(batched_inputs)
        with self._tapping(net) as taps:
            if self._need_fpn:
                net.backbone(images.tensor)
            else:
                net.backbone.bottom_up(images.tensor)
        return taps

    def _position_list(self, taps: Dict[str, torch.Tensor]) -> List[Optional[torch.Tensor]]:
        feats: List[Optional[torch.Tensor]] = [None] * len(self._keys)
        for i in self.distiller.distilled_positions:
            feat = taps[self._keys[i]]
            if not self.prerelu and self._keys[i].endswith("_prerelu"):
                feat = F.relu(feat)
            feats[i] = feat
        return feats

    # -- training / inference -------------------------------------------------------------
    def forward(self, batched_inputs):
        if not self.training:
            return (self.t_net if self.eval_teacher else self.s_net)(batched_inputs)
        with self._tapping(self.s_net) as s_taps:
            losses = self.s_net(batched_inputs)
        with torch.no_grad():
            t_taps = self._backbone_taps(self.t_net, batched_inputs)
        per_position = self.distiller(self._position_list(s_taps), self._position_list(t_taps))
        storage = get_event_storage()
        for name, value in per_position.items():
            storage.put_scalar(f"mgd/loss_{name}", value.detach().item() / self.ims_per_batch)
        losses["loss_distill"] = sum(per_position.values()) / self.ims_per_batch
        return losses

    def distillation_losses(self, batched_inputs) -> Dict[str, torch.Tensor]:
        """Per-position losses (after factor, before the batch division) of one batch, no grad.

        For the loss-factor probe; runs both backbones in the current mode.
        """
        with torch.no_grad():
            s_taps = self._backbone_taps(self.s_net, batched_inputs)
            t_taps = self._backbone_taps(self.t_net, batched_inputs)
            return self.distiller(self._position_list(s_taps), self._position_list(t_taps))

    # -- margins and matching (called by the trainer hook) --------------------------------
    def teacher_affines(self):
        """(gamma, beta) of the teacher norm before each c position's ReLU; None for FPN."""
        blocks = self.t_net.backbone.bottom_up.last_blocks()
        affines = []
        for name in self.position_names:
            if name[0] == "c":
                norm = prerelu_norm(blocks["res" + name[1:]])
                affines.append((norm.weight.detach(), norm.bias.detach()))
            else:
                affines.append(None)
        return affines

    def update_margins(self):
        self.distiller.update_margins(self.teacher_affines())

    def reset_matching(self):
        self.distiller.reset_matching()

    @torch.no_grad()
    def accumulate_matching(self, batched_inputs):
        """Add one batch to the matching costs (call with the model in eval mode)."""
        s_taps = self._backbone_taps(self.s_net, batched_inputs)
        t_taps = self._backbone_taps(self.t_net, batched_inputs)
        self.distiller.accumulate_matching(self._position_list(s_taps), self._position_list(t_taps))

    def finish_matching(self) -> Dict[str, float]:
        return self.distiller.finish_matching()
