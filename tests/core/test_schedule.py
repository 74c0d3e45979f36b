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


def test_the_schedule_is_validated_when_built_and_its_rule_matches_the_shorthands():
    from mgd.schedule import MatchingSchedule

    with pytest.raises(ValueError, match="one more entry"):
        MatchingSchedule((5000,), (20000,))
    schedule = MatchingSchedule([5000, 31000], [20000])  # lists are taken, and kept as tuples
    assert schedule == MatchingSchedule((5000, 31000), (20000,))
    assert schedule.iterations(90000) == [0, 5000, 10000, 15000, 31000, 62000]
    assert schedule.next_scheduled(15000, 90000) == 31000  # past the slow step: every 31000
    assert schedule.next_scheduled(62000, 90000) is None


def test_rescaling_keeps_the_matchings_at_the_same_point_of_training():
    """Upstream's auto-scaling on 1 process with REFERENCE_WORLD_SIZE 8 divides the batch by 8
    and multiplies every iteration count by 8: the matchings must land on 8 x the reference's
    iterations (brute force over the reference rule), as SOLVER.STEPS do."""
    from mgd.schedule import MatchingSchedule

    reference = MatchingSchedule((5000, 31000), (20000,))
    one_process = reference.scaled(1 / 8)
    assert one_process.iterations(8 * 90000) == [8 * it for it in reference.iterations(90000)]
    # and back: 8 processes from a 1-process reference
    assert one_process.scaled(8) == reference
    # a rounding case: a scale that does not divide the counts keeps them >= 1 and ordered
    assert MatchingSchedule((3, 5), (7,)).scaled(4) == MatchingSchedule((1, 1), (2,))


def test_rescaled_pass_keeps_the_images_of_the_matching_statistic():
    from mgd.schedule import scaled_update_iter

    # "all": (UPDATE_ITER + 1) x IMS_PER_BATCH images stay the reference's (1001 x 16 = 8008 x 2)
    assert (scaled_update_iter(1000, 1 / 8, "all") + 1) * 2 == (1000 + 1) * 16
    # "rank0": rank 0's batch is unchanged, so is the number of batches it draws
    assert scaled_update_iter(1000, 1 / 8, "rank0") == 1000
