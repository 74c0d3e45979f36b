"""Channel matching between student and teacher (MGD, Sec. 3.1-3.2).

The cost of pairing student channel s with teacher channel t is the squared distance between
their L2-normalised response maps, 2 - 2 cos(s, t), summed over images. Every student channel
is matched to tc // sc distinct teacher channels by one linear sum assignment over the cost
stacked tc // sc times ("tiled"); the sparse variant (SM) matches one teacher channel each.

:func:`plan_matching_pass` sizes one matching pass (batches drawn, images used) so that the
assignment is solved from as many images as the reference run's, at any process count.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

#: MGD.MATCHING_RANKS: "all" (every rank's images enter the costs) or "rank0" (the original's)
MATCHING_RANKS = ("all", "rank0")

__all__ = [
    "matching_cost", "solve_matching", "random_assignment", "copies_per_student", "assignment_length",
    "MatchingPass", "plan_matching_pass", "MATCHING_RANKS",
]


def copies_per_student(student_channels: int, teacher_channels: int) -> int:
    """k = tc // sc: how many teacher channels each student channel is matched to."""
    if student_channels < 1 or teacher_channels < student_channels:
        raise ValueError(
            f"teacher channels ({teacher_channels}) must be >= student channels ({student_channels}) >= 1"
        )
    return teacher_channels // student_channels


def assignment_length(student_channels: int, teacher_channels: int, sparse: bool = False) -> int:
    """Length of ``solve_matching``'s result: sc for SM, else (tc // sc) * sc."""
    k = copies_per_student(student_channels, teacher_channels)
    return student_channels if sparse else k * student_channels


def matching_cost(student: Tensor, teacher: Tensor) -> Tensor:
    """Sum over the batch of 2 - 2 cos between every student and teacher channel map.

    Args:
        student: [N, sc, H, W]; teacher: [N, tc, H, W] (same N, H, W).

    Returns:
        Tensor [sc, tc] (float32 or wider, on the features' device); each entry is in
        [0, 4 N]. An all-zero map has cosine 0 with everything (cost 2 per image).
    """
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(f"expected [N, C, H, W] features, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    n, sc, h, w = student.shape
    if teacher.shape[0] != n or teacher.shape[2:] != student.shape[2:]:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in N, H or W")
    dtype = torch.promote_types(student.dtype, torch.float32)
    s = student.flatten(2).to(dtype)  # [N, sc, HW]
    t = teacher.flatten(2).to(dtype)  # [N, tc, HW]
    # cos = <s, t> / (|s| |t|): scale the [N, sc, tc] inner products rather than the maps.
    inner = torch.bmm(s, t.transpose(1, 2))
    inv_s = _inverse_norm(s)
    inv_t = _inverse_norm(t)
    cosine = inner.mul_(inv_s[:, :, None]).mul_(inv_t[:, None, :])
    return cosine.sum(0).mul_(-2.0).add_(2.0 * n)


def _inverse_norm(maps: Tensor) -> Tensor:
    """1 / max(|map|, 1e-12) per image and channel, as F.normalize uses; [N, C, P] -> [N, C]."""
    return torch.linalg.vector_norm(maps, dim=2).clamp_min_(1e-12).reciprocal_()


def solve_matching(cost: Tensor, sparse: bool = False) -> Tensor:
    """Minimum-cost assignment of teacher channels to student channels for one position.

    Args:
        cost: [sc, tc] with tc >= sc (any device); finite.
        sparse: False -> tiled matching: k = tc // sc copies of the cost are stacked
            vertically and only the first k * sc teacher columns are used ("shave" when
            tc % sc != 0); the result has length k * sc and entry i * sc + j is the teacher
            channel of student channel j in copy i. Each student channel gets k distinct
            teacher channels; they are listed in ascending order over the copies (copies are
            interchangeable, so this does not change the total cost).
            True -> SM: an optimal injection, one distinct teacher channel per student
            channel; result length sc.

    Returns:
        LongTensor on ``cost``'s device.
    """
    if cost.dim() != 2:
        raise ValueError(f"cost must be [sc, tc], got {tuple(cost.shape)}")
    sc, tc = cost.shape
    k = copies_per_student(sc, tc)
    host_cost = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(host_cost).all():
        raise ValueError("matching cost contains NaN or inf")
    if sparse:
        teachers = _solve_injection(host_cost)
    else:
        teachers = _solve_tiled(host_cost, k)
    return torch.from_numpy(teachers).to(cost.device)


def random_assignment(student_channels: int, teacher_channels: int, sparse: bool = False,
                      generator: Optional[torch.Generator] = None) -> Tensor:
    """An assignment of :func:`solve_matching`'s form drawn uniformly at random, without a cost:
    ``assignment_length(sc, tc, sparse)`` distinct teacher channels (a random injection), so each
    student channel gets k = tc // sc (or one, ``sparse``) teacher channels, none used twice.
    The paper's ablation of the matching (a fixed random assignment). CPU LongTensor."""
    length = assignment_length(student_channels, teacher_channels, sparse)
    return torch.randperm(teacher_channels, generator=generator)[:length]


def _solve_injection(cost: np.ndarray) -> np.ndarray:
    """SM: min-cost injection students -> teachers, [sc, tc] -> [sc].

    The original pads the cost to tc x tc with a constant huge cost in rows >= sc; those rows
    add the same constant to every assignment, so the rectangular problem has the same optima.
    """
    students, teachers = linear_sum_assignment(cost)
    return teachers[np.argsort(students)].astype(np.int64)


def _solve_tiled(cost: np.ndarray, k: int) -> np.ndarray:
    """Tiled matching: [sc, tc] -> [k * sc], entry i * sc + j = i-th teacher of student j."""
    sc = cost.shape[0]
    used = cost[:, : k * sc]  # shave: drop the last tc % sc teacher columns
    # The tiled cost is np.tile(used, (k, 1)): row i * sc + j = student j, copy i. We build its
    # transpose directly (teachers x student copies): the same problem, which scipy solves
    # faster for these shapes.
    tiled_t = np.tile(used.T, (1, k))  # [k * sc, k * sc], C-contiguous
    teachers, rows = linear_sum_assignment(tiled_t)
    student_of_teacher = rows % sc
    order = np.lexsort((teachers, student_of_teacher))  # by student, then teacher index
    per_student = teachers[order].reshape(sc, k)  # [sc, k], ascending teacher indices
    return np.ascontiguousarray(per_student.T).reshape(-1).astype(np.int64)


@dataclass(frozen=True)
class MatchingPass:
    """One matching pass: how many batches each rank draws and which images enter the costs.

    Attributes:
        ranks: "all" (every rank's costs are summed before the solve) or "rank0" (rank 0's
            alone, the original's rule).
        world_size: processes.
        rank_batch: images per batch on each rank (``IMS_PER_BATCH / world_size``).
        batches: batches every rank draws from its training stream (equal on every rank, so
            the ranks' data streams stay aligned).
        images: images the assignment is solved from (over the ranks whose costs are used).
    """

    ranks: str
    world_size: int
    rank_batch: int
    batches: int
    images: int

    def images_taken(self, rank: int, batch: int) -> int:
        """How many of the first images of ``rank``'s ``batch``-th batch (0-based) enter the costs.

        "all": the pass's images are counted batch by batch, rank by rank within a batch, and
        the count stops at :attr:`images` (only the last batch may be used in part).
        "rank0": every image of rank 0, none of the others.
        """
        if not (0 <= rank < self.world_size and 0 <= batch < self.batches):
            raise ValueError(f"rank {rank} / batch {batch} outside the pass ({self.world_size} ranks, "
                             f"{self.batches} batches)")
        if self.ranks == "rank0":
            return self.rank_batch if rank == 0 else 0
        before = (batch * self.world_size + rank) * self.rank_batch
        return max(0, min(self.rank_batch, self.images - before))


def plan_matching_pass(update_iter: int, ims_per_batch: int, reference_world_size: int,
                       world_size: int, ranks: str = "all") -> MatchingPass:
    """Size a matching pass from ``MGD.UPDATE_ITER`` as the reference run meant it.

    The original ran ``update_iter + 1`` batches on each of its ``reference_world_size`` GPUs
    (its per-GPU batch: ``ims_per_batch / reference_world_size`` images) and solved from rank
    0's images alone: ``(update_iter + 1) * ims_per_batch / reference_world_size`` images
    (COCO: 1001 x 2 = 2002).

    * ``ranks="all"``: the assignment is solved from that many images (rounded up) at any
      process count, summed over every rank: each rank draws
      ``ceil(images / ims_per_batch)`` batches (COCO: 126 on 1, 2 or 8 GPUs), and only the
      images up to the count enter the costs.
    * ``ranks="rank0"``: the original's rule: ``update_iter + 1`` batches on every rank, rank
      0's images only (``(update_iter + 1) * ims_per_batch / world_size``: the count depends
      on the process count).

    ``reference_world_size`` 0 (the original code's rules, see ``distillation_divisor``) takes
    this run as its own reference: ``reference_world_size = world_size``.
    """
    if ranks not in MATCHING_RANKS:
        raise ValueError(f"MGD.MATCHING_RANKS must be 'all' or 'rank0', got {ranks!r}")
    if update_iter < 0 or ims_per_batch <= 0 or world_size <= 0 or reference_world_size < 0:
        raise ValueError(f"need update_iter >= 0, ims_per_batch > 0, world_size > 0, reference_world_size >= 0; "
                         f"got {update_iter}, {ims_per_batch}, {world_size}, {reference_world_size}")
    if ims_per_batch % world_size:
        raise ValueError(f"ims_per_batch {ims_per_batch} is not divisible by world_size {world_size}")
    rank_batch = ims_per_batch // world_size
    if ranks == "rank0":
        batches = update_iter + 1
        return MatchingPass(ranks, world_size, rank_batch, batches, batches * rank_batch)
    reference = reference_world_size or world_size
    images = -(-(update_iter + 1) * ims_per_batch // reference)  # ceil, in integers
    return MatchingPass(ranks, world_size, rank_batch, -(-images // ims_per_batch), images)
