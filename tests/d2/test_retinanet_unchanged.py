"""The MGD RetinaNet computes what it computed before the distiller learned other detectors:
on fixed weights and batches, the taps, margins, matching costs and assignments, per-position
and detection losses, the student's gradients and the inference outputs fingerprint as recorded
(tests/data/mgd_retinanet_reference.json, written by ``python tests/retinanet_reference.py
record`` at 51ee218, before that change).

On the CPU model it was recorded on (this project's CI machine) every tensor must be bitwise
equal (SHA-256 of its bytes); elsewhere kernels differ, so the sums are compared to 1e-5 and the
assignments exactly.
"""
import json
import math
import subprocess
import sys

import pytest

from d2_support import REPO, detectron2_env

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]

_SCRIPT = """
import json, sys
from retinanet_reference import fingerprints, cpu_model
json.dump({"cpu": cpu_model(), "values": fingerprints()}, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def now_and_then(tmp_path_factory):
    out = tmp_path_factory.mktemp("retinanet_reference") / "now.json"
    env = detectron2_env()
    env["PYTHONPATH"] += ":" + str(REPO / "tests")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    then = json.loads((REPO / "tests" / "data" / "mgd_retinanet_reference.json").read_text())
    return json.loads(out.read_text()), then


def test_every_recorded_tensor_is_computed_again_with_its_shape(now_and_then):
    now, then = now_and_then
    assert sorted(now["values"]) == sorted(then["values"])
    for key, recorded in then["values"].items():
        assert (now["values"][key]["shape"], now["values"][key]["dtype"]) == (recorded["shape"], recorded["dtype"]), key


def test_the_same_numbers_as_recorded(now_and_then):
    now, then = now_and_then
    bitwise = now["cpu"] == then["cpu"]
    different = []
    for key, recorded in then["values"].items():
        value = now["values"][key]
        if bitwise or recorded["dtype"] == "int64":
            same = value["sha256"] == recorded["sha256"]
        else:
            same = math.isclose(value["sum"], recorded["sum"], rel_tol=1e-5, abs_tol=1e-6)
        if not same:
            different.append(f"{key}: sum {value['sum']!r} (recorded {recorded['sum']!r})")
    assert not different, ("bitwise " if bitwise else "") + "differences:\n" + "\n".join(different)
