"""Margins vs independent references: Monte Carlo E[x | x < 0] and scipy's truncated normal."""
import math

import pytest
import torch
from scipy.stats import truncnorm

import mgd


def monte_carlo_negative_mean(mean: float, std: float, samples: int = 4_000_000, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, generator=g, dtype=torch.float64) * std + mean
    return x[x < 0].mean().item()


def negative_mass(mean: float, std: float) -> float:
    return 0.5 * math.erfc(mean / std / math.sqrt(2))  # P(x < 0) for x ~ N(mean, std^2)


# (gamma, beta) with P(x < 0) well above 0.001, including negative gamma (s = |gamma|)
FORMULA_CASES = [(1.0, 0.0), (2.0, 1.0), (0.5, -1.0), (1.0, 2.0), (-1.5, 0.7), (0.3, 0.8)]


@pytest.mark.parametrize("gamma,beta", FORMULA_CASES)
def test_margin_matches_monte_carlo(gamma, beta):
    std = abs(gamma)
    assert negative_mass(beta, std) > 0.001
    got = mgd.margins_from_affine(torch.tensor([gamma]), torch.tensor([beta]))
    expected = monte_carlo_negative_mean(beta, std)
    assert got.item() == pytest.approx(expected, abs=0.01 * std)


def test_margins_vectorised_match_truncated_normal_mean():
    gamma = torch.tensor([1.0, 2.0, 0.5, 1.0, -1.5, 0.3, 1.0], dtype=torch.float64)
    beta = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.7, 0.8, 3.0], dtype=torch.float64)  # 3.0: Phi(-3) = 0.00135
    got = mgd.margins_from_affine(gamma, beta)
    for g, b, m in zip(gamma.tolist(), beta.tolist(), got.tolist()):
        s = abs(g)
        expected = truncnorm.mean(-math.inf, (0 - b) / s, loc=b, scale=s)
        assert m == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("gamma,beta", [(1.0, 3.2), (2.0, 7.0), (0.1, 1.0), (-1.0, 4.0)])
def test_negligible_negative_mass_gives_minus_three_std(gamma, beta):
    assert negative_mass(beta, abs(gamma)) <= 0.001
    got = mgd.margins_from_affine(torch.tensor([gamma]), torch.tensor([beta]))
    assert got.item() == pytest.approx(-3 * abs(gamma))


def test_threshold_sits_at_one_in_a_thousand():
    # m/s just either side of Phi^-1(0.999) = 3.0902
    below, above = mgd.margins_from_affine(torch.tensor([1.0, 1.0]), torch.tensor([3.08, 3.10]))
    assert below.item() != pytest.approx(-3.0, abs=1e-3)  # truncated-normal branch, ~ -0.30
    assert below.item() == pytest.approx(truncnorm.mean(-math.inf, -3.08, loc=3.08, scale=1.0), rel=1e-5)
    assert above.item() == -3.0


def test_fresh_norm_margin_is_minus_sqrt_two_over_pi():
    got = mgd.margins_from_affine(torch.ones(5), torch.zeros(5))
    torch.testing.assert_close(got, torch.full((5,), -math.sqrt(2 / math.pi)))


def test_dtype_shape_and_constant_channels():
    got = mgd.margins_from_affine(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([-2.0, 0.0, 1.0]))
    assert got.dtype == torch.float32 and got.shape == (3,)
    assert got.tolist() == [-2.0, 0.0, 0.0]  # a constant response: its own value if negative
    assert torch.isfinite(got).all()


def test_mismatched_affine_refused():
    with pytest.raises(ValueError):
        mgd.margins_from_affine(torch.ones(3), torch.zeros(4))
