"""Channel matching between student and teacher (MGD, Sec. 3.1-3.2).

The cost of pairing student channel s with teacher channel t is the squared distance between
their L2-normalised response maps, 2 - 2 cos(s, t), summed over images. Every student channel
is matched to tc // sc distinct teacher channels by one linear sum assignment over the cost
stacked tc // sc times ("tiled"); the sparse variant (SM) matches one teacher channel each.
"""
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ["matching_cost", "solve_matching", "copies_per_student", "assignment_length"]


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
    # transpose directly (teachers x student copies): the same problem, on which scipy is up
    # to ~2x faster for these shapes.
    tiled_t = np.tile(used.T, (1, k))  # [k * sc, k * sc], C-contiguous
    teachers, rows = linear_sum_assignment(tiled_t)
    student_of_teacher = rows % sc
    order = np.lexsort((teachers, student_of_teacher))  # by student, then teacher index
    per_student = teachers[order].reshape(sc, k)  # [sc, k], ascending teacher indices
    return np.ascontiguousarray(per_student.T).reshape(-1).astype(np.int64)
