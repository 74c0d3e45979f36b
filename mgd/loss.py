"""The MGD distillation loss for one position (a partial L2 with teacher margins)."""
import torch
from torch import Tensor

__all__ = ["distillation_loss"]


def distillation_loss(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """Summed masked squared error between student and margin-clipped teacher responses.

    target = max(teacher, margin); a location counts where the student exceeds the target or
    the target is positive: loss = sum(mask * (student - target)^2). Where the teacher is
    negative, the student is only pushed down to the margin, never up to it.

    Args:
        student: [N, C, H, W] (normalised student responses; gradients flow to it).
        teacher: [N, C, H, W] (reduced teacher responses; treated as a constant).
        margin: broadcastable to the features, e.g. [1, C, 1, 1].

    Returns:
        Scalar tensor (sum over all elements, not averaged).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")
    target = torch.maximum(teacher.detach(), margin.detach().to(teacher.dtype))
    mask = (student > target) | (target > 0)
    return torch.where(mask, (student - target).square(), student.new_zeros(())).sum()
