"""`import mgd` needs only torch and scipy, and exposes the public interface of docs/mgd.md."""
import inspect
import subprocess
import sys

import mgd


def test_import_does_not_touch_detectron2():
    code = ("import sys, mgd; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('detectron2', 'ortools')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_interface():
    expected = {
        "margins_from_affine": ["weight", "bias"],
        "distillation_loss": ["student", "teacher", "margin"],
        "matching_cost": ["student", "teacher"],
        "solve_matching": ["cost", "sparse"],
        "reduce_teacher": ["teacher", "margin", "guided", "student_channels", "method", "generator"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(mgd, name)).parameters) == params
    assert mgd.REDUCERS == ("amp", "rd", "sp", "sm")
    init = inspect.signature(mgd.MGDDistiller.__init__).parameters
    assert list(init) == ["self", "student_channels", "teacher_channels", "reducer", "ignore_inds",
                          "loss_factors", "norm", "position_names"]
    for method in ("update_margins", "reset_matching", "accumulate_matching", "finish_matching", "forward"):
        assert callable(getattr(mgd.MGDDistiller, method))
