"""Random number generators as a function of where training is, not of what ran before.

A resumed run continues the same training only if every random draw after the resume is
the one the uninterrupted run made. Instead of saving and restoring generator states (which
differ per process, per data-loading worker and per moment of a Ctrl-C), training reseeds them
from the run's seed and its position: each training step from ``(seed, rank, iteration)``
(:func:`seed_step`), each data sample from ``(seed, rank, sample number)``
(:func:`seeded_rngs` around its mapping). So a draw depends only on that position, and a
resume, a different number of data-loading workers or an interruption anywhere gives the same
draws. The generators are Python's ``random``, NumPy's global one and torch's (CPU and, when
initialised, CUDA).
"""
import contextlib
import random
from typing import Iterator

import numpy as np
import torch

__all__ = ["derive_seed", "seed_all", "seeded_rngs", "seed_step", "STEP", "SAMPLE", "MATCHING_STREAM",
           "RANDOM_ASSIGNMENT"]

#: the domains of :func:`derive_seed`: a training step, a data sample, the matching passes' own
#: data stream (``MGD.MATCHING_DATA separate``), a random assignment (``MGD.ASSIGNMENT random``)
STEP, SAMPLE, MATCHING_STREAM, RANDOM_ASSIGNMENT = 1, 2, 3, 4


def derive_seed(seed: int, *position: int) -> int:
    """A 32-bit seed for ``position`` (e.g. ``(rank, iteration, STEP)``) of the run ``seed``.

    NumPy's ``SeedSequence`` hashes the entropy, so neighbouring positions get unrelated seeds
    (``seed + iteration`` would give neighbouring runs overlapping streams).
    """
    words = [int(seed), *map(int, position)]
    if any(w < 0 for w in words):
        raise ValueError(f"seeds and positions must be >= 0, got {words}")
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0])


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_step(seed: int, rank: int, iteration: int) -> None:
    """Seed the generators for training step ``iteration`` of process ``rank``."""
    seed_all(derive_seed(seed, rank, iteration, STEP))


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Run the block with Python's, NumPy's and torch's CPU generators seeded with ``seed``,
    then put back the states they had (the caller's draws are not disturbed)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)  # the CPU one: fork_rng restores only it
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
