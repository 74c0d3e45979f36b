"""mgd.seeding: random draws as a function of the position in training."""
import random

import numpy as np
import pytest
import torch

from mgd.seeding import derive_seed, seed_step, seeded_rngs


def draws():
    return np.random.rand(), random.random(), torch.rand(1).item()


def test_derived_seeds_are_fixed_32_bit_and_unrelated_for_neighbours():
    seeds = [derive_seed(7, 0, it, 1) for it in range(1000)]
    assert seeds == [derive_seed(7, 0, it, 1) for it in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2 ** 32 for s in seeds)
    assert derive_seed(7, 1, 0, 1) != derive_seed(7, 0, 1, 1) != derive_seed(8, 0, 0, 1)
    with pytest.raises(ValueError, match=">= 0"):
        derive_seed(-1, 0)


def test_a_step_draws_the_same_whatever_ran_before():
    seed_step(7, 0, 12)
    first = draws()
    draws(), draws()  # other work in between
    seed_step(7, 0, 12)
    assert draws() == first
    seed_step(7, 1, 12)
    assert draws() != first


def test_seeded_rngs_gives_fixed_draws_and_restores_the_callers_state():
    np.random.seed(0), random.seed(0), torch.manual_seed(0)
    expected = [draws() for _ in range(2)]
    np.random.seed(0), random.seed(0), torch.manual_seed(0)
    with seeded_rngs(123):
        inside = draws()
    after = draws()
    with seeded_rngs(123):
        assert draws() == inside
    assert after == expected[0] and draws() == expected[1]
