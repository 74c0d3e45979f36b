"""When the channel matching is recomputed: the rule, its validation and its rescaling.

Before training step ``iteration``, the matching is recomputed when ``iteration % f == 0``
with ``f = UPDATE_FREQ[k]``, k being the number of ``UPDATE_SLOW_STEP`` entries <= iteration
(defaults for a 90k run: 0, 5k, 10k, 15k, 31k, 62k), and at the first iteration of a run that
has no assignment yet. A resumed run continues with the assignment its checkpoint holds; with
``MGD.REMATCH_ON_RESUME`` (the original's behaviour, which saved none) it recomputes it at its
first iteration too.

:class:`MatchingSchedule` is the one home of this decision: built (and validated) once from the
config, asked by the trainer's hook at every step, rescaled with upstream's
``SOLVER.REFERENCE_WORLD_SIZE`` auto-scaling. The functions below it are shorthands for tools
and tests.
"""
import bisect
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

__all__ = ["MatchingSchedule", "scaled_update_iter", "scheduled", "matching_update_due",
           "matching_schedule"]


@dataclass(frozen=True)
class MatchingSchedule:
    """``MGD.UPDATE_FREQ`` / ``MGD.UPDATE_SLOW_STEP``, validated when built (ValueError)."""

    update_freq: Tuple[int, ...]
    slow_steps: Tuple[int, ...]

    def __post_init__(self):
        freq, slow = tuple(int(f) for f in self.update_freq), tuple(int(s) for s in self.slow_steps)
        object.__setattr__(self, "update_freq", freq)
        object.__setattr__(self, "slow_steps", slow)
        if len(freq) != len(slow) + 1:
            raise ValueError(f"MGD.UPDATE_FREQ needs one more entry than MGD.UPDATE_SLOW_STEP, got "
                             f"{list(freq)} and {list(slow)}")
        if any(f <= 0 for f in freq):
            raise ValueError(f"MGD.UPDATE_FREQ entries must be > 0, got {list(freq)}")
        if list(slow) != sorted(slow):
            raise ValueError(f"MGD.UPDATE_SLOW_STEP must be increasing, got {list(slow)}")

    @classmethod
    def from_config(cls, cfg) -> "MatchingSchedule":
        """The schedule of a config with an ``MGD`` node (any config class)."""
        return cls(tuple(cfg.MGD.UPDATE_FREQ), tuple(cfg.MGD.UPDATE_SLOW_STEP))

    def scheduled(self, iteration: int) -> bool:
        """Whether the schedule names ``iteration`` (whatever iteration the run started at)."""
        return iteration % self.update_freq[bisect.bisect_right(self.slow_steps, iteration)] == 0

    def due(self, iteration: int, start_iter: int, *, assignment_restored: bool = False) -> bool:
        """Whether the matching is recomputed before training step ``iteration`` of a run that
        started at ``start_iter``; ``assignment_restored``: the run resumed with its checkpoint's
        assignment (then its first iteration needs no matching of its own)."""
        return self.scheduled(iteration) or (iteration == start_iter and not assignment_restored)

    def iterations(self, max_iter: int, start_iter: int = 0, *, assignment_restored: bool = False) -> List[int]:
        """Every iteration in [start_iter, max_iter) at which the matching is recomputed."""
        return [it for it in range(start_iter, max_iter)
                if self.due(it, start_iter, assignment_restored=assignment_restored)]

    def next_scheduled(self, after: int, max_iter: int) -> Optional[int]:
        """The first scheduled iteration in (after, max_iter), or None."""
        return next((it for it in range(after + 1, max_iter) if self.scheduled(it)), None)

    def scaled(self, scale: float) -> "MatchingSchedule":
        """The schedule of a run whose iteration counts are divided by ``scale`` (upstream's
        auto-scaling multiplies the batch by ``scale``): the matchings stay at the same point of
        training, as ``SOLVER.STEPS`` do."""
        return MatchingSchedule(tuple(max(1, int(round(f / scale))) for f in self.update_freq),
                                tuple(int(round(s / scale)) for s in self.slow_steps))


def scaled_update_iter(update_iter: int, scale: float, matching_ranks: str) -> int:
    """``MGD.UPDATE_ITER`` after the batch is multiplied by ``scale``, so that the matching's
    statistic stays the reference's: under ``"all"`` the pass keeps ``(UPDATE_ITER + 1) x
    IMS_PER_BATCH`` images; under ``"rank0"`` the per-process batch is unchanged, so is the pass."""
    if matching_ranks == "all":
        return max(1, int(round((update_iter + 1) / scale)) - 1)
    return update_iter


def scheduled(iteration: int, update_freq: Sequence[int], slow_steps: Sequence[int]) -> bool:
    """:meth:`MatchingSchedule.scheduled` of the two lists."""
    return MatchingSchedule(tuple(update_freq), tuple(slow_steps)).scheduled(iteration)


def matching_update_due(iteration: int, start_iter: int, update_freq: Sequence[int], slow_steps: Sequence[int],
                        *, assignment_restored: bool = False) -> bool:
    """:meth:`MatchingSchedule.due` of the two lists."""
    return MatchingSchedule(tuple(update_freq), tuple(slow_steps)).due(
        iteration, start_iter, assignment_restored=assignment_restored)


def matching_schedule(max_iter: int, update_freq: Sequence[int], slow_steps: Sequence[int], start_iter: int = 0,
                      *, assignment_restored: bool = False) -> List[int]:
    """:meth:`MatchingSchedule.iterations` of the two lists."""
    return MatchingSchedule(tuple(update_freq), tuple(slow_steps)).iterations(
        max_iter, start_iter, assignment_restored=assignment_restored)
