"""Matching cost vs an explicit loop; assignments vs brute force and independent optima."""
import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment, linprog

import mgd


def looped_cost(student, teacher):
    """cost[a, b] = sum_n (2 - 2 <s_na / |s_na|, t_nb / |t_nb|>), one pair at a time."""
    n, sc = student.shape[:2]
    tc = teacher.shape[1]
    cost = torch.zeros(sc, tc, dtype=torch.float64)
    for i in range(n):
        for a in range(sc):
            s = student[i, a].flatten().double()
            s = s / max(s.norm().item(), 1e-12)
            for b in range(tc):
                t = teacher[i, b].flatten().double()
                t = t / max(t.norm().item(), 1e-12)
                cost[a, b] += 2 - 2 * torch.dot(s, t)
    return cost


@pytest.mark.parametrize("n,sc,tc,h,w", [(2, 3, 5, 4, 6), (1, 4, 4, 1, 1), (3, 2, 8, 3, 3), (1, 3, 7, 5, 2)])
def test_cost_matches_explicit_loop(n, sc, tc, h, w):
    g = torch.Generator().manual_seed(n * 100 + sc * 10 + tc)
    student = torch.randn(n, sc, h, w, generator=g)
    teacher = torch.randn(n, tc, h, w, generator=g)
    got = mgd.matching_cost(student, teacher)
    assert got.shape == (sc, tc)
    torch.testing.assert_close(got.double(), looped_cost(student, teacher), rtol=0, atol=1e-5)


def test_cost_of_zero_map_and_identical_maps():
    student = torch.zeros(2, 2, 3, 3)
    student[:, 1] = torch.arange(9.0).view(3, 3)
    teacher = torch.stack([student[:, 1] * 5.0, -student[:, 1]], dim=1)
    cost = mgd.matching_cost(student, teacher)
    torch.testing.assert_close(cost, torch.tensor([[4.0, 4.0], [0.0, 8.0]]))  # zero map: 2 per image


def test_cost_refuses_mismatched_maps():
    with pytest.raises(ValueError):
        mgd.matching_cost(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 4))
    with pytest.raises(ValueError):
        mgd.matching_cost(torch.zeros(2, 2, 3, 3), torch.zeros(1, 4, 3, 3))


# -- tiled assignment -----------------------------------------------------------------------

def tiled_total(cost: np.ndarray, guided: np.ndarray) -> float:
    sc = cost.shape[0]
    return float(sum(cost[r % sc, t] for r, t in enumerate(guided)))


def brute_force_tiled_optimum(cost: np.ndarray) -> float:
    """Every way to give each student exactly k of the first k*sc teachers."""
    sc, tc = cost.shape
    used = (tc // sc) * sc
    return min(
        sum(cost[r % sc, t] for r, t in enumerate(perm)) for perm in itertools.permutations(range(used))
    )


def transportation_optimum(cost: np.ndarray) -> float:
    """The tiled problem as an LP (students supply k, teachers demand 1), solved by HiGHS."""
    sc, tc = cost.shape
    k = tc // sc
    used = cost[:, : k * sc]
    m = k * sc
    a_eq = np.zeros((sc + m, sc * m))
    for j in range(sc):
        a_eq[j, j * m:(j + 1) * m] = 1
    for t in range(m):
        a_eq[sc + t, t::m] = 1
    b_eq = np.concatenate([np.full(sc, k), np.ones(m)])
    res = linprog(used.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    assert res.status == 0
    return res.fun


def check_tiled_structure(guided: np.ndarray, sc: int, tc: int) -> None:
    k = tc // sc
    assert guided.shape == (k * sc,)
    assert len(set(guided.tolist())) == k * sc  # every teacher channel used at most once
    assert guided.min() >= 0 and guided.max() < k * sc  # shave: the last tc % sc never used
    per_student = guided.reshape(k, sc).T  # [sc, k]
    for teachers in per_student:
        assert len(set(teachers.tolist())) == k


@pytest.mark.parametrize("sc,tc", [(2, 4), (2, 5), (3, 6), (2, 6), (5, 5), (3, 7), (1, 6)])
def test_tiled_assignment_is_optimal_by_brute_force(sc, tc):
    rng = np.random.default_rng(sc * 10 + tc)
    cost = rng.uniform(0, 4, (sc, tc))
    guided = mgd.solve_matching(torch.from_numpy(cost)).numpy()
    check_tiled_structure(guided, sc, tc)
    assert tiled_total(cost, guided) == pytest.approx(brute_force_tiled_optimum(cost), rel=1e-12)


@pytest.mark.parametrize("sc,tc", [(8, 32), (16, 16), (6, 40), (12, 50)])
def test_tiled_assignment_matches_transportation_lp_and_tiled_lsa(sc, tc):
    rng = np.random.default_rng(sc + tc)
    cost = rng.uniform(0, 4, (sc, tc)).astype(np.float32)
    guided = mgd.solve_matching(torch.from_numpy(cost)).numpy()
    check_tiled_structure(guided, sc, tc)
    k = tc // sc
    tiled = np.tile(cost[:, : k * sc].astype(np.float64), (k, 1))
    rows, cols = linear_sum_assignment(tiled)  # the original's formulation, solved directly
    assert tiled_total(cost.astype(np.float64), guided) == pytest.approx(tiled[rows, cols].sum(), rel=1e-9)
    assert tiled_total(cost.astype(np.float64), guided) == pytest.approx(transportation_optimum(cost), rel=1e-7)


def test_tiled_layout_copy_major_and_ascending_within_student():
    # student j's cheapest teachers are exactly {j, j + sc, j + 2 sc}: the layout is unambiguous
    sc, k = 3, 3
    cost = np.full((sc, sc * k), 3.0)
    for j in range(sc):
        cost[j, j::sc] = 0.0
    guided = mgd.solve_matching(torch.from_numpy(cost)).tolist()
    assert guided == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # entry i*sc + j = teacher i*sc + j


def test_equal_channels_is_a_permutation():
    cost = torch.tensor([[5.0, 1.0, 9.0], [1.0, 5.0, 9.0], [9.0, 9.0, 0.0]])
    assert mgd.solve_matching(cost).tolist() == [1, 0, 2]


def test_result_is_long_on_cost_device():
    guided = mgd.solve_matching(torch.rand(4, 16))
    assert guided.dtype == torch.long and guided.device == torch.device("cpu")


# -- sparse matching (SM) -------------------------------------------------------------------

@pytest.mark.parametrize("sc,tc", [(3, 5), (2, 6), (4, 4), (1, 3), (3, 7)])
def test_sparse_assignment_is_optimal_injection(sc, tc):
    rng = np.random.default_rng(sc * 7 + tc)
    cost = rng.uniform(0, 4, (sc, tc))
    guided = mgd.solve_matching(torch.from_numpy(cost), sparse=True).numpy()
    assert guided.shape == (sc,) and len(set(guided.tolist())) == sc
    best = min(sum(cost[j, t] for j, t in enumerate(inj)) for inj in itertools.permutations(range(tc), sc))
    assert sum(cost[j, t] for j, t in enumerate(guided)) == pytest.approx(best, rel=1e-12)


def test_sparse_equals_padded_square_formulation():
    rng = np.random.default_rng(3)
    sc, tc = 10, 37
    cost = rng.uniform(0, 4, (sc, tc))
    padded = np.full((tc, tc), 1e9)
    padded[:sc] = cost
    rows, cols = linear_sum_assignment(padded)
    guided = mgd.solve_matching(torch.from_numpy(cost), sparse=True).numpy()
    assert cost[np.arange(sc), guided].sum() == pytest.approx(padded[rows[:sc], cols[:sc]].sum(), rel=1e-12)


# -- refusals -------------------------------------------------------------------------------

def test_refuses_fewer_teacher_than_student_channels():
    with pytest.raises(ValueError, match="teacher channels"):
        mgd.solve_matching(torch.rand(5, 4))


def test_refuses_non_finite_and_non_matrix_costs():
    bad = torch.rand(2, 4)
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError):
        mgd.solve_matching(bad)
    with pytest.raises(ValueError):
        mgd.solve_matching(torch.rand(2, 4, 1))


@pytest.mark.parametrize("sc, tc, sparse", [(4, 8, False), (3, 8, False), (4, 8, True), (5, 5, False)])
def test_random_assignment_is_an_injection_of_solve_matchings_form(sc, tc, sparse):
    """Each student channel gets tc // sc distinct teacher channels (one for SM), none used twice."""
    g = torch.Generator().manual_seed(0)
    drawn = mgd.matching.random_assignment(sc, tc, sparse=sparse, generator=g)
    k = 1 if sparse else tc // sc
    assert drawn.dtype == torch.long and drawn.shape == (k * sc,)
    assert len(set(drawn.tolist())) == k * sc and all(0 <= t < tc for t in drawn.tolist())


def test_random_assignment_is_uniform_over_teacher_channels():
    """Monte Carlo: every teacher channel is picked with probability k * sc / tc, and every
    student channel's first teacher is uniform (a chi-square bound on 4000 draws)."""
    sc, tc, draws = 2, 6, 4000
    g = torch.Generator().manual_seed(1)
    counts = np.zeros((sc * (tc // sc), tc))
    for _ in range(draws):
        for slot, t in enumerate(mgd.matching.random_assignment(sc, tc, generator=g).tolist()):
            counts[slot, t] += 1
    expected = draws / tc
    chi2 = ((counts - expected) ** 2 / expected).sum(axis=1)
    assert (chi2 < 25.7).all(), chi2  # 99.99 % quantile of chi-square with 5 degrees of freedom


def test_random_assignment_follows_its_generator():
    draw = [mgd.matching.random_assignment(8, 32, generator=torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    assert torch.equal(draw[0], draw[1]) and not torch.equal(draw[0], draw[2])
