"""Reducers: turn the matched teacher channels into one target channel per student channel.

With k = tc // sc copies, the tiled assignment ``guided`` [k * sc] selects, for student
channel j, the teacher channels guided[i * sc + j], i < k. The matched teacher responses are
viewed as [N, k, sc, H, W] and reduced over the copies:

- "amp": absolute max pooling: the value with the largest magnitude; margin = mean.
- "rd": a random copy per location; margin = a random copy's margin per channel.
- "sp": max pooling (signed); margin = max.
- "sm": sparse matching; ``guided`` [sc] is one teacher channel per student channel.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["reduce_teacher", "REDUCERS"]

REDUCERS = ("amp", "rd", "sp", "sm")


def reduce_teacher(
    teacher: Tensor,
    margin: Tensor,
    guided: Tensor,
    student_channels: int,
    method: str,
    *,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Reduce teacher responses to the student's channels along a matching.

    Args:
        teacher: [N, tc, H, W] teacher responses.
        margin: the teacher's per-channel margins, [tc] or any shape with tc elements
            (e.g. [1, tc, 1, 1]).
        guided: LongTensor from ``solve_matching``: [k * sc] (tiled) or [sc] (for "sm").
        student_channels: sc.
        method: "amp" | "rd" | "sp" | "sm".
        generator: optional RNG for "rd" (on the teacher's device).

    Returns:
        (t, m): t [N, sc, H, W] reduced responses, m [1, sc, 1, 1] reduced margins.
    """
    if method not in REDUCERS:
        raise ValueError(f"unknown reducer {method!r}; expected one of {REDUCERS}")
    n, tc, h, w = teacher.shape
    sc = student_channels
    margin = margin.reshape(-1).to(teacher.device)
    guided = guided.to(teacher.device)
    if margin.numel() != tc:
        raise ValueError(f"margin has {margin.numel()} entries for {tc} teacher channels")
    if guided.dim() != 1 or guided.numel() == 0 or guided.numel() % sc != 0:
        raise ValueError(f"assignment of length {guided.numel()} does not fit {sc} student channels")
    if method == "sm" and guided.numel() != sc:
        raise ValueError(f"'sm' needs one teacher channel per student channel ({sc}), got {guided.numel()}")
    k = guided.numel() // sc
    matched = teacher.index_select(1, guided).view(n, k, sc, h, w)
    matched_margin = margin.index_select(0, guided).view(k, sc)
    if method == "amp":
        t, m = _absolute_max(matched), matched_margin.mean(0)
    elif method == "sp":
        t, m = matched.amax(1), matched_margin.amax(0)
    elif method == "rd":
        t, m = _random_copy(matched, matched_margin, generator)
    else:  # "sm": k == 1
        t, m = matched[:, 0], matched_margin[0]
    return t, m.view(1, sc, 1, 1)


def _absolute_max(matched: Tensor) -> Tensor:
    """[N, k, sc, H, W] -> [N, sc, H, W]: the value of largest |x| over copies (first on ties)."""
    pick = matched.abs().argmax(1, keepdim=True)
    return matched.gather(1, pick).squeeze(1)


def _random_copy(
    matched: Tensor, matched_margin: Tensor, generator: Optional[torch.Generator]
) -> Tuple[Tensor, Tensor]:
    """A uniformly random copy per (image, channel, location) and per channel for the margin."""
    n, k, sc, h, w = matched.shape
    pick = torch.randint(k, (n, 1, sc, h, w), generator=generator, device=matched.device)
    margin_pick = torch.randint(k, (1, sc), generator=generator, device=matched.device)
    return matched.gather(1, pick).squeeze(1), matched_margin.gather(0, margin_pick).squeeze(0)
