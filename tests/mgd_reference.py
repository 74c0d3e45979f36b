"""A naive MGD step written from the paper's formulas, for tests (no tests here).

It shares no code with ``mgd/`` or the overlay: the taps are read by forward hooks on
upstream's ResNet blocks, positions are a table written here, margins come from scipy's
truncated normal, and the reducers and the loss are explicit loops over channels and
copies. Tests compare the model's one-pass step with it.

Formulas (MGD paper, Sec. 3; docs/mgd.md):
    tap cK    = conv path of stage resK's last block + its shortcut (before the final ReLU);
                with PRERELU False, relu of it.  pK = FPN output pK.
    margin    = E[x | x < 0] for x ~ N(beta, gamma^2) of the teacher norm feeding that ReLU
                (gamma 1, beta 0 for FPN outputs); -3|gamma| when P(x < 0) <= 0.001.
    reduce    = student channel j takes teacher channels guided[i * sc + j], i < k copies;
                "amp": elementwise the value of largest |.| (+a on a tie), margin = mean;
                "sm": the one channel guided[j].
    loss      = sum over elements where (s > t') or (t' > 0) of (s - t')^2, t' = max(t, margin),
                s = GroupNorm(32)(student tap); per position divided by its factor; the sum of
                positions divided by IMS_PER_BATCH * REFERENCE_WORLD_SIZE / world size.
"""
import math
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm
from torch import Tensor

#: position name -> ResNet stage (its last block is tapped) or None for an FPN output
POSITION_STAGES = {"c2": "res2", "c3": "res3", "c4": "res4", "c5": "res5",
                   "p3": None, "p4": None, "p5": None, "p6": None, "p7": None}
POSITION_NAMES = tuple(POSITION_STAGES)
STUDENT_NORM_GROUPS = 32


def randomise_norms(net, seed: int) -> None:
    """Non-trivial affine in every FrozenBN/GroupNorm of ``net`` (test setup, not a reference):
    gamma in [0.5, 1.5), beta ~ N(0, 0.3^2), so taps have both signs and margins differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "weight") and type(m).__name__ in ("FrozenBatchNorm2d", "GroupNorm"):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)


def distilled_names(cfg) -> List[str]:
    ignored = set(cfg.MGD.IGNORE_INDS)
    return [name for i, name in enumerate(POSITION_NAMES) if i not in ignored]


def divisor_for_one_process(cfg) -> float:
    """IMS_PER_BATCH * REFERENCE_WORLD_SIZE / 1 (the published balance, one process)."""
    return cfg.SOLVER.IMS_PER_BATCH * cfg.MGD.REFERENCE_WORLD_SIZE / 1


def _last_conv(block):
    return block.conv3 if hasattr(block, "conv3") else block.conv2


def hooked_taps(net, images: Tensor, names, prerelu: bool = True) -> Dict[str, Tensor]:
    """{position name: feature [N, C, H, W]} of ``net`` (a RetinaNet) for ``images``.

    One backbone pass (the FPN only if a p position is asked for) with hooks on each stage's
    last block: its input (for the shortcut) and its last conv's output (conv + norm), both
    cloned (upstream's block adds the shortcut and applies the ReLU in place).
    Gradients flow through the returned features when grad is enabled.
    """
    bottom_up = net.backbone.bottom_up
    stages = {POSITION_STAGES[n] for n in names if POSITION_STAGES[n]}
    seen, handles = {}, []
    for stage_name in stages:
        block = getattr(bottom_up, stage_name)[-1]
        handles.append(_last_conv(block).register_forward_hook(
            lambda m, i, o, s=stage_name: seen.__setitem__(s + "/conv", o.clone())))
        handles.append(block.register_forward_pre_hook(
            lambda m, i, s=stage_name: seen.__setitem__(s + "/in", i[0].clone())))
    want_fpn = any(POSITION_STAGES[n] is None for n in names)
    try:
        outputs = net.backbone(images) if want_fpn else bottom_up(images)
    finally:
        for h in handles:
            h.remove()
    taps = {}
    for name in names:
        stage_name = POSITION_STAGES[name]
        if stage_name is None:
            taps[name] = outputs[name]
            continue
        block = getattr(bottom_up, stage_name)[-1]
        x = seen[stage_name + "/in"]
        shortcut = x if block.shortcut is None else block.shortcut(x)
        tap = seen[stage_name + "/conv"] + shortcut
        taps[name] = tap if prerelu else torch.relu(tap)
    return taps


def truncated_normal_margins(gamma: Tensor, beta: Tensor) -> Tensor:
    """[C] E[x | x < 0] for x ~ N(beta, gamma^2), by scipy; -3|gamma| below 0.001 mass."""
    s = gamma.detach().double().abs().numpy()
    m = beta.detach().double().numpy()
    mean = truncnorm.mean(-np.inf, (0.0 - m) / s, loc=m, scale=s)
    mass = np.array([0.5 * math.erfc(mi / si / math.sqrt(2.0)) for mi, si in zip(m, s)])
    return torch.from_numpy(np.where(mass > 0.001, mean, -3.0 * s)).float()


def teacher_margins(t_net, name: str) -> Tensor:
    """Margins of position ``name`` from the teacher's norm before that ReLU."""
    stage_name = POSITION_STAGES[name]
    if stage_name is None:
        channels = t_net.backbone.output_shape()[name].channels
        return truncated_normal_margins(torch.ones(channels), torch.zeros(channels))
    norm = _last_conv(getattr(t_net.backbone.bottom_up, stage_name)[-1]).norm
    return truncated_normal_margins(norm.weight, norm.bias)


def naive_reduce(teacher: Tensor, margin: Tensor, guided: Tensor, sc: int, method: str) -> Tuple[Tensor, Tensor]:
    """(target [N, sc, H, W], margin [sc]) by loops over student channels and copies."""
    guided = guided.tolist()
    k = len(guided) // sc
    assert len(guided) == k * sc and (method != "sm" or k == 1)
    targets, margins = [], []
    for j in range(sc):
        channels = [guided[i * sc + j] for i in range(k)]
        best = teacher[:, channels[0]]
        for c in channels[1:]:
            value = teacher[:, c]
            if method == "amp":
                take = (value.abs() > best.abs()) | ((value.abs() == best.abs()) & (value > best))
            elif method == "sp":
                take = value > best
            else:
                raise ValueError(method)
            best = torch.where(take, value, best)
        targets.append(best)
        picked = [margin[c].item() for c in channels]
        margins.append(max(picked) if method == "sp" else sum(picked) / len(picked))
    return torch.stack(targets, 1), torch.tensor(margins, dtype=teacher.dtype)


def naive_loss(student: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """sum((s - t')^2) over the elements where s > t' or t' > 0, t' = max(t, margin)."""
    target = torch.maximum(target, margin.view(1, -1, 1, 1))
    counted = (student > target) | (target > 0)
    return ((student - target) ** 2 * counted).sum()


def naive_position_losses(model, cfg, s_taps, t_taps, assignments) -> Dict[str, Tensor]:
    """{position: loss / factor} from the taps, the teacher's norms and the assignments."""
    losses = {}
    for name in distilled_names(cfg):
        norm = model.distiller.student_norms[name]
        assert isinstance(norm, torch.nn.GroupNorm), "the reference knows GroupNorm student norms only"
        student = F.group_norm(s_taps[name], STUDENT_NORM_GROUPS, norm.weight, norm.bias, norm.eps)
        target, margin = naive_reduce(t_taps[name].detach(), teacher_margins(model.t_net, name),
                                      assignments[name], student.shape[1], cfg.MGD.REDUCER.lower())
        factor = cfg.MGD.LOSS_FACTORS[POSITION_NAMES.index(name)]
        losses[name] = naive_loss(student, target, margin) / factor
    return losses
