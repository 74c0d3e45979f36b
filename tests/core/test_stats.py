"""mgd_tools.stats: the paired comparison of a study's arms, against independent references."""
import math
import random

import pytest

from mgd_tools.stats import paired_difference, summary


def test_summary_matches_scipys_one_sample_t_interval():
    from scipy import stats

    values = [0.31, -0.12, 0.44, 0.05, 0.27]
    got = summary(values)
    result = stats.ttest_1samp(values, 0.0)
    low, high = result.confidence_interval(0.95)
    assert got["n"] == 5 and got["mean"] == pytest.approx(sum(values) / 5)
    assert got["sd"] == pytest.approx(stats.tstd(values))
    assert got["ci95"] == pytest.approx([low, high])


def test_two_values_use_the_t_quantile_with_one_degree_of_freedom():
    # closed form: mean 1, sd sqrt(2), half width t(0.975, 1) x sqrt(2) / sqrt(2) = 12.7062...
    got = summary([0.0, 2.0])
    assert got["sd"] == pytest.approx(math.sqrt(2))
    assert got["ci95"] == pytest.approx([1 - 12.706204736, 1 + 12.706204736], rel=1e-9)


def test_the_interval_covers_the_true_mean_95_percent_of_the_time():
    """Monte Carlo: 4000 samples of 5 normal values; the 95 % interval holds the mean in
    95 % +- 1 % of them (the binomial sd is 0.34 %)."""
    rng = random.Random(0)
    hits = sum(1 for _ in range(4000)
               if (lambda ci: ci[0] <= 2.0 <= ci[1])(summary([rng.gauss(2.0, 3.0) for _ in range(5)])["ci95"]))
    assert abs(hits / 4000 - 0.95) < 0.01


def test_one_value_has_no_spread_and_no_interval():
    assert summary([1.5]) == {"n": 1, "mean": 1.5, "sd": None, "ci95": None}
    with pytest.raises(ValueError):
        summary([])


def test_differences_are_paired_by_seed():
    arm = {1: 10.0, 2: 12.0, 3: 11.0, 4: 9.0}
    plain = {3: 10.0, 1: 9.5, 2: 11.0, 5: 8.0}  # seed 4 and 5 unpaired, left out
    got = paired_difference(arm, plain)
    assert got["seeds"] == [1, 2, 3] and got["differences"] == [0.5, 1.0, 1.0]
    assert got["mean"] == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError, match="no seed"):
        paired_difference({1: 1.0}, {2: 1.0})
