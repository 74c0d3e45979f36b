"""The distillation loss and its gradient vs a naive elementwise formula."""
import pytest
import torch

import mgd


def naive_loss_and_grad(student, teacher, margin):
    """Element by element: target = max(t, m); counted where s > target or target > 0."""
    loss = 0.0
    grad = torch.zeros_like(student)
    n, c, h, w = student.shape
    for idx in torch.cartesian_prod(*(torch.arange(d) for d in (n, c, h, w))).tolist():
        a, ch, y, x = idx
        s = student[a, ch, y, x].item()
        target = max(teacher[a, ch, y, x].item(), margin[ch].item())
        if s > target or target > 0:
            loss += (s - target) ** 2
            grad[a, ch, y, x] = 2 * (s - target)
    return loss, grad


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 1, 1), (3, 2, 2, 1)])
def test_loss_and_gradient_match_naive_formula(shape):
    g = torch.Generator().manual_seed(sum(shape))
    student = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(shape, generator=g, dtype=torch.float64)
    margin = -torch.rand(shape[1], generator=g, dtype=torch.float64)
    loss = mgd.distillation_loss(student, teacher, margin.view(1, -1, 1, 1))
    loss.backward()
    expected_loss, expected_grad = naive_loss_and_grad(student.detach(), teacher, margin)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-12)
    torch.testing.assert_close(student.grad, expected_grad)


def test_student_below_negative_target_costs_nothing():
    teacher = torch.full((1, 1, 1, 3), -5.0)
    margin = torch.full((1, 1, 1, 1), -1.0)  # target = max(-5, -1) = -1
    student = torch.tensor([[[[-3.0, -1.0, 0.5]]]])
    # -3 and -1 are not above the target; 0.5 is, by 1.5
    assert mgd.distillation_loss(student, teacher, margin).item() == pytest.approx(1.5**2)


def test_positive_target_pulls_from_both_sides():
    teacher = torch.tensor([[[[2.0, 2.0]]]])
    margin = torch.full((1, 1, 1, 1), -1.0)
    student = torch.tensor([[[[1.0, 3.5]]]])
    assert mgd.distillation_loss(student, teacher, margin).item() == pytest.approx(1.0 + 1.5**2)


def test_no_gradient_to_teacher_or_margin():
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
    margin = torch.zeros(1, 3, 1, 1, requires_grad=True)
    mgd.distillation_loss(student, teacher, margin).backward()
    assert student.grad is not None and teacher.grad is None and margin.grad is None


def test_shape_mismatch_refused():
    with pytest.raises(ValueError):
        mgd.distillation_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3), torch.zeros(1, 2, 1, 1))
