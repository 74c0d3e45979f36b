"""Paired comparisons of runs over seeds: mean, sample standard deviation, Student-t interval.

An arm's runs and the plain student's share each seed (same initial weights and data order), so
an arm is compared with the plain student by the per-seed differences ``arm - plain``: their
mean, sample standard deviation, and the two-sided 95 % confidence interval of the mean from
Student's t distribution with n - 1 degrees of freedom. One seed gives a difference without an
interval (None).
"""
import math
from typing import Dict, List, Optional, Sequence

__all__ = ["summary", "paired_difference", "t_quantile"]


def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile of Student's t with ``dof`` degrees of freedom (SciPy)."""
    from scipy.stats import t

    return float(t.ppf(probability, dof))


def summary(values: Sequence[float], confidence: float = 0.95) -> Dict[str, Optional[object]]:
    """``{"n", "mean", "sd", "ci95": [low, high]}`` of ``values``; sd and the interval are None
    for fewer than two values (``ci95`` is the interval at ``confidence``)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "sd": None, "ci95": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half]}


def paired_difference(arm: Dict[int, float], reference: Dict[int, float],
                      confidence: float = 0.95) -> Dict[str, Optional[object]]:
    """:func:`summary` of ``arm[s] - reference[s]`` over the seeds both have, plus ``seeds`` and
    the per-seed ``differences``. Raises ValueError when they share no seed."""
    seeds: List[int] = sorted(set(arm) & set(reference))
    if not seeds:
        raise ValueError("the two arms share no seed")
    differences = [arm[s] - reference[s] for s in seeds]
    return {**summary(differences, confidence), "seeds": seeds, "differences": differences}
