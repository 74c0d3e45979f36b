"""`import mgd` needs only torch and scipy, and exposes the public interface of docs/mgd.md; the
modules that make's quick steps run (the overlay, the command-line helpers) import neither."""
import inspect
import subprocess
import sys

import mgd


def test_import_does_not_touch_detectron2():
    code = ("import sys; from mgd import *; "
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


def test_every_public_name_resolves_and_an_unknown_one_does_not():
    for name in mgd.__all__:
        value = getattr(mgd, name)
        assert name.isupper() or value.__module__.startswith("mgd."), name
        assert name in dir(mgd)
    try:
        mgd.no_such_name
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name resolved")


def test_the_quick_modules_start_without_torch_or_scipy():
    """`make overlay` (run before every training target) and the error-line helpers start in
    milliseconds: importing the package for them must not import torch (~2-5 s here)."""
    code = ("import sys, mgd.overlay, mgd.cli, mgd.bootstrap, mgd.errors; "
            "heavy = [m for m in ('torch', 'scipy', 'numpy') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
