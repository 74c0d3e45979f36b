"""Reducers: turn the matched teacher channels into one target channel per student channel.

With k = tc // sc copies, the tiled assignment ``guided`` [k * sc] selects, for student
channel j, the teacher channels guided[i * sc + j], i < k ("copy" i). The matched teacher
responses are reduced over the k copies, elementwise:

- "amp": absolute max pooling: the value with the largest magnitude (on an exact tie
  between +a and -a, +a); margin = mean.
- "rd": a random copy per location; margin = a random copy's margin per channel.
- "sp": max pooling (signed); margin = max.
- "sm": sparse matching; ``guided`` [sc] is one teacher channel per student channel.
"""
from typing import Iterator, Optional, Tuple

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
    teacher = teacher.contiguous()  # once here, not once per copy inside index_select
    copies = guided.view(k, sc)  # row i: the teacher channels of copy i
    matched_margin = margin.index_select(0, guided).view(k, sc)
    if method == "amp":
        t, m = _absolute_max(teacher, copies), matched_margin.mean(0)
    elif method == "sp":
        t, m = _max(teacher, copies), matched_margin.amax(0)
    elif method == "rd":
        t, m = _random_copy(teacher, copies, matched_margin, generator)
    else:  # "sm": k == 1
        t, m = _select_channels(teacher, copies[0]), matched_margin[0]
    return t, m.view(1, sc, 1, 1)


def _matched(teacher: Tensor, copies: Tensor) -> Iterator[Tensor]:
    """The teacher responses of copies 1..k-1 in turn, [N, sc, H, W] each, in ONE buffer.

    Reducing copy by copy keeps [N, sc, H, W] buffers instead of an [N, k, sc, H, W] one,
    avoids arg-reductions over a strided axis (slow on CPU) and fresh allocations (page
    faults are costly on CPU). Each yielded tensor is overwritten by the next.
    """
    buffer = None
    for channels in copies[1:]:
        buffer = _select_channels(teacher, channels, out=buffer)
        yield buffer


def _select_channels(teacher: Tensor, channels: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """teacher[:, channels], [N, tc, H, W] -> [N, len(channels), H, W] (into ``out`` if given).

    ``teacher`` must be contiguous: this is one row gather over [N * tc, H * W], several
    times faster on CPU than index_select along dim 1.
    """
    n, tc, h, w = teacher.shape
    if out is None:
        out = teacher.new_empty((n, channels.numel(), h, w))
    rows = (torch.arange(n, device=teacher.device)[:, None] * tc + channels[None, :]).reshape(-1)
    torch.index_select(teacher.view(n * tc, h * w), 0, rows, out=out.view(-1, h * w))
    return out


def _max(teacher: Tensor, copies: Tensor) -> Tensor:
    """SP: elementwise max over the copies."""
    out = _select_channels(teacher, copies[0])
    for values in _matched(teacher, copies):
        torch.maximum(out, values, out=out)
    return out


def _absolute_max(teacher: Tensor, copies: Tensor) -> Tensor:
    """AMP: elementwise value of largest magnitude over the copies (+a over -a on a tie)."""
    high = _select_channels(teacher, copies[0])
    low = high.clone()
    values = None
    for values in _matched(teacher, copies):
        torch.maximum(high, values, out=high)
        torch.minimum(low, values, out=low)
    # |high| >= |low|  <=>  high + low >= 0  (high >= low everywhere)
    balance = torch.add(high, low, out=values) if values is not None else high + low
    return torch.where(balance >= 0, high, low, out=high)


def _random_copy(
    teacher: Tensor, copies: Tensor, matched_margin: Tensor, generator: Optional[torch.Generator]
) -> Tuple[Tensor, Tensor]:
    """RD: a uniformly random copy per (image, channel, location); per channel for the margin."""
    k, sc = copies.shape
    n, _, h, w = teacher.shape
    pick = torch.randint(k, (n, sc, h, w), generator=generator, device=teacher.device)
    margin_pick = torch.randint(k, (1, sc), generator=generator, device=teacher.device)
    out = _select_channels(teacher, copies[0])
    for i, values in enumerate(_matched(teacher, copies), start=1):
        torch.where(pick == i, values, out, out=out)
    return out, matched_margin.gather(0, margin_pick).squeeze(0)
