"""Margins: the expected negative response of each teacher channel (MGD, Sec. 3.3).

A pre-ReLU teacher response after a norm layer with affine weight gamma and bias beta is
modelled as x ~ N(beta, gamma^2). Its margin is E[x | x < 0], the value the student only has
to stay below where the teacher is negative.
"""
import math

import torch
from torch import Tensor

__all__ = ["margins_from_affine", "NEGLIGIBLE_NEGATIVE_MASS"]

#: Below this probability of a negative response, the margin falls back to -3 * std.
NEGLIGIBLE_NEGATIVE_MASS = 0.001


def _std_normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def margins_from_affine(weight: Tensor, bias: Tensor) -> Tensor:
    """Per-channel margins from a norm layer's affine parameters.

    Args:
        weight: gamma, shape [C]; the std of the response is s = |gamma|.
        bias: beta, shape [C]; the mean of the response, m = beta.

    Returns:
        Tensor [C] (dtype and device of ``weight``): m - s * phi(m/s) / Phi(-m/s) where
        Phi(-m/s) > 0.001, else -3 * s. A channel with gamma == 0 is a constant: its margin is
        m when m < 0, else 0.
    """
    weight, bias = weight.detach(), bias.detach()
    if weight.shape != bias.shape or weight.dim() != 1:
        raise ValueError(f"weight and bias must both be [C], got {tuple(weight.shape)} and {tuple(bias.shape)}")
    s = weight.double().abs()
    m = bias.double().to(s.device)
    z = m / s
    negative_mass = torch.special.ndtr(-z)  # Phi(-m/s) = P(x < 0)
    truncated_mean = m - s * _std_normal_pdf(z) / negative_mass
    margin = torch.where(negative_mass > NEGLIGIBLE_NEGATIVE_MASS, truncated_mean, -3.0 * s)
    return margin.to(weight.dtype)
