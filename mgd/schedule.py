"""When the channel matching is recomputed: the rule, as pure functions.

Before training step ``iteration``, the matching is recomputed when ``iteration % f == 0``
with ``f = UPDATE_FREQ[k]``, k being the number of ``UPDATE_SLOW_STEP`` entries <= iteration
(defaults for a 90k run: 0, 5k, 10k, 15k, 31k, 62k), and at the first iteration of a run that
has no assignment yet. A resumed run continues with the assignment its checkpoint holds; with
``MGD.REMATCH_ON_RESUME`` (the original's behaviour, which saved none) it recomputes it at its
first iteration too.
"""
import bisect
from typing import List, Sequence

__all__ = ["check_schedule", "scheduled", "matching_update_due", "matching_schedule"]


def check_schedule(update_freq: Sequence[int], slow_steps: Sequence[int]) -> None:
    """Raise ValueError unless ``MGD.UPDATE_FREQ`` / ``MGD.UPDATE_SLOW_STEP`` form a schedule."""
    if len(update_freq) != len(slow_steps) + 1:
        raise ValueError(
            f"MGD.UPDATE_FREQ needs one more entry than MGD.UPDATE_SLOW_STEP, got "
            f"{list(update_freq)} and {list(slow_steps)}"
        )
    if any(f <= 0 for f in update_freq):
        raise ValueError(f"MGD.UPDATE_FREQ entries must be > 0, got {list(update_freq)}")
    if list(slow_steps) != sorted(slow_steps):
        raise ValueError(f"MGD.UPDATE_SLOW_STEP must be increasing, got {list(slow_steps)}")


def scheduled(iteration: int, update_freq: Sequence[int], slow_steps: Sequence[int]) -> bool:
    """Whether the schedule names ``iteration`` (whatever iteration the run started at)."""
    check_schedule(update_freq, slow_steps)
    freq = update_freq[bisect.bisect_right(list(slow_steps), iteration)]
    return iteration % freq == 0


def matching_update_due(iteration: int, start_iter: int, update_freq: Sequence[int], slow_steps: Sequence[int],
                        *, assignment_restored: bool = False) -> bool:
    """Whether the matching is recomputed before training step ``iteration`` of a run that
    started at ``start_iter``; ``assignment_restored``: the run resumed with its checkpoint's
    assignment (then its first iteration needs no matching of its own)."""
    if scheduled(iteration, update_freq, slow_steps):
        return True
    return iteration == start_iter and not assignment_restored


def matching_schedule(max_iter: int, update_freq: Sequence[int], slow_steps: Sequence[int], start_iter: int = 0,
                      *, assignment_restored: bool = False) -> List[int]:
    """Every iteration in [start_iter, max_iter) at which the matching is recomputed."""
    return [it for it in range(start_iter, max_iter)
            if matching_update_due(it, start_iter, update_freq, slow_steps, assignment_restored=assignment_restored)]
