"""The matching schedule rule (a pure function; no 90k-iteration run needed)."""
import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="Detectron2 not built here (run `make detectron2`)")
# the checkout folder alone is an empty namespace package "detectron2": need the real one
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

from d2_support import import_overlay  # noqa: E402

import_overlay()

from detectron2.engine.mgd_hooks import matching_schedule, matching_update_due  # noqa: E402

FREQ, SLOW = [5000, 31000], [20000]


def test_coco_1x_schedule_fires_at_the_originals_iterations():
    assert matching_schedule(90000, FREQ, SLOW) == [0, 5000, 10000, 15000, 31000, 62000]


def test_resume_fires_at_the_first_iteration_of_the_run_then_on_schedule():
    assert matching_schedule(90000, FREQ, SLOW, start_iter=7001) == [7001, 10000, 15000, 31000, 62000]
    assert matching_schedule(90000, FREQ, SLOW, start_iter=62000) == [62000]
    assert matching_update_due(45000, 45000, FREQ, SLOW)
    assert not matching_update_due(20000, 0, FREQ, SLOW)  # past the slow step: every 31000
    assert not matching_update_due(25000, 0, FREQ, SLOW)


def test_more_slow_steps_and_bad_schedules():
    assert matching_schedule(40, [5, 10, 20], [10, 20]) == [0, 5, 10, 20]
    with pytest.raises(ValueError, match="one more entry"):
        matching_update_due(0, 0, [5000], [20000])
    with pytest.raises(ValueError, match="> 0"):
        matching_update_due(0, 0, [0, 10], [5])
