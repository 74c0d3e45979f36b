"""The matching schedule rule (mgd.schedule: pure functions; no 90k-iteration run needed)."""
import pytest

from mgd.schedule import matching_schedule, matching_update_due, scheduled

FREQ, SLOW = [5000, 31000], [20000]


def test_coco_1x_schedule_fires_at_the_originals_iterations():
    assert matching_schedule(90000, FREQ, SLOW) == [0, 5000, 10000, 15000, 31000, 62000]
    # brute force over the rule as the paper's code states it: every FREQ[0] before the slow step,
    # every FREQ[1] after
    expected = [it for it in range(90000) if (it % 5000 == 0 if it < 20000 else it % 31000 == 0)]
    assert matching_schedule(90000, FREQ, SLOW) == expected


def test_a_resumed_run_with_its_assignment_matches_only_on_schedule():
    assert matching_schedule(90000, FREQ, SLOW, start_iter=7001, assignment_restored=True) == [10000, 15000, 31000,
                                                                                               62000]
    assert not matching_update_due(45000, 45000, FREQ, SLOW, assignment_restored=True)
    # a resume that lands on a scheduled iteration still matches there
    assert matching_update_due(10000, 10000, FREQ, SLOW, assignment_restored=True)


def test_a_run_without_an_assignment_matches_at_its_first_iteration():
    # an old checkpoint without assignments, or MGD.REMATCH_ON_RESUME (the original's behaviour)
    assert matching_schedule(90000, FREQ, SLOW, start_iter=7001) == [7001, 10000, 15000, 31000, 62000]
    assert matching_schedule(90000, FREQ, SLOW, start_iter=62000) == [62000]
    assert matching_update_due(45000, 45000, FREQ, SLOW)
    assert not matching_update_due(20000, 0, FREQ, SLOW)  # past the slow step: every 31000
    assert not matching_update_due(25000, 0, FREQ, SLOW)


def test_scheduled_ignores_where_the_run_started():
    assert scheduled(0, FREQ, SLOW) and scheduled(15000, FREQ, SLOW) and scheduled(62000, FREQ, SLOW)
    assert not scheduled(7001, FREQ, SLOW) and not scheduled(25000, FREQ, SLOW)


def test_more_slow_steps_and_bad_schedules():
    assert matching_schedule(40, [5, 10, 20], [10, 20]) == [0, 5, 10, 20]
    with pytest.raises(ValueError, match="one more entry"):
        matching_update_due(0, 0, [5000], [20000])
    with pytest.raises(ValueError, match="> 0"):
        matching_update_due(0, 0, [0, 10], [5])
    with pytest.raises(ValueError, match="increasing"):
        scheduled(0, [1, 2, 3], [20, 10])
