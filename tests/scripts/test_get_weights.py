"""`make weights` (scripts/get_weights.py): kept, refused and converted weights, through make.
The full chain (random-init weights made and converted, then replaced by ImageNet stand-ins) is
tests/checkpoint/test_strict_d2.py's slow test; the download itself needs the network (not here)."""
import pytest

from mgd.checkpoint import RANDOM_INIT_KEY
from scripts_support import converted_student, run_make, run_script, write_pickle

pytestmark = pytest.mark.detectron2  # the checkout's converter and its build are checked first


def one_error(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


def test_weights_of_the_kind_asked_for_are_kept(tmp_path):
    for depth in (18, 50):
        write_pickle(tmp_path / f"r-{depth}.pkl", {**converted_student(18), RANDOM_INIT_KEY: True})
    before = (tmp_path / "r-18.pkl").read_bytes()
    proc = run_make("weights", "RANDOM_INIT=1", f"WEIGHTS_DIR={tmp_path}", merged=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{tmp_path}/r-{d}.pkl exists (random weights), kept" for d in (18, 50)]
    assert (tmp_path / "r-18.pkl").read_bytes() == before


def test_imagenet_weights_are_never_replaced_by_random_ones(tmp_path):
    write_pickle(tmp_path / "r-18.pkl", converted_student(18))
    before = (tmp_path / "r-18.pkl").read_bytes()
    line = one_error(run_make("weights", "RANDOM_INIT=1", f"WEIGHTS_DIR={tmp_path}", merged=False))
    assert line == (f"error: {tmp_path}/r-18.pkl holds ImageNet weights; put random-init ones in another folder: "
                    "make weights RANDOM_INIT=1 WEIGHTS_DIR=weights/random")
    assert (tmp_path / "r-18.pkl").read_bytes() == before and not list(tmp_path.glob("resnet*"))


def test_an_unbuilt_checkout_is_one_error(tmp_path):
    (tmp_path / "d2" / "detectron2").mkdir(parents=True)
    proc = run_script("get_weights.py", "--weights-dir", tmp_path / "w", "--checkout", tmp_path / "d2")
    assert one_error(proc) == f"error: Detectron2 is not built in {tmp_path / 'd2'}; run 'make detectron2' first"
    assert not (tmp_path / "w").exists()
