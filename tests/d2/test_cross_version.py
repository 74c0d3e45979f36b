"""The same numbers on the pinned and on today's Detectron2, for the MGD RetinaNet and the MGD
Faster R-CNN: with the same weights and batches, the MGD taps, margins, matching costs and assignments, per-position distillation losses, the
detection losses, the student's gradients and the inference outputs agree.

Each version runs in its own process (tests/cross_version_dump.py; two Detectron2s cannot share
one interpreter), the pin first: it writes the weights the other loads. Measured on the CPU: all
of it is bitwise equal except the order of detections whose scores are exactly equal (the two
versions sort ties differently), so detections are compared as sets. The tolerance below is
for other machines' kernels, not a difference seen here.

Runs when both ``detectron2/`` and ``detectron2-latest/`` are built (``make test`` builds both).
"""
import subprocess
import sys

import pytest
import torch

from d2_support import REPO, detectron2_env

pytestmark = [pytest.mark.two_versions, pytest.mark.slow]

VERSIONS = {"pin": REPO / "detectron2", "latest": REPO / "detectron2-latest"}
_MISSING = [name for name, path in VERSIONS.items() if not list((path / "detectron2").glob("_C*.so"))]
if _MISSING:
    pytest.skip(f"needs both Detectron2 targets built (missing: {', '.join(_MISSING)}; "
                "`make detectron2 DETECTRON2=latest`)", allow_module_level=True)


def _dump(version: str, weights, out, detector) -> dict:
    proc = subprocess.run([sys.executable, REPO / "tests" / "cross_version_dump.py", weights, out, detector],
                          env=detectron2_env(VERSIONS[version]), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{version}:\n{proc.stderr[-4000:]}"
    return torch.load(out, weights_only=True)


def _detections(out: dict, image: int) -> list:
    rows = zip(out[f"inference/{image}/scores"].tolist(), out[f"inference/{image}/classes"].tolist(),
               out[f"inference/{image}/boxes"].tolist())
    return sorted(rows, key=lambda row: (-row[0], row[1], row[2]))


@pytest.fixture(scope="module", params=["retinanet", "faster_rcnn"])
def dumps(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"cross_version_{request.param}")
    weights = tmp / "weights.pt"
    pin = _dump("pin", weights, tmp / "pin.pt", request.param)
    assert weights.exists()
    return pin, _dump("latest", weights, tmp / "latest.pt", request.param)


@pytest.mark.parametrize("group", ["tap", "margin", "cost", "assignment", "position_loss", "loss",
                                   "loss_normalizer", "grad"])
def test_the_same_numbers(dumps, group):
    pin, latest = dumps
    keys = sorted(k for k in pin if k.split("/")[0] == group)
    if group == "loss_normalizer" and group not in pin:  # RetinaNet's only
        assert group not in latest
        return
    assert keys and keys == sorted(k for k in latest if k.split("/")[0] == group)
    for key in keys:
        if pin[key].dtype == torch.long:  # assignments: exactly the same
            assert torch.equal(pin[key], latest[key]), key
        else:
            torch.testing.assert_close(latest[key], pin[key], rtol=1e-5, atol=1e-6, msg=key)


def test_the_same_detections(dumps):
    pin, latest = dumps
    images = sorted({k.split("/")[1] for k in pin if k.startswith("inference/")})
    assert images == ["0", "1"]
    for image in map(int, images):
        ours, theirs = _detections(pin, image), _detections(latest, image)
        assert len(ours) == len(theirs) > 0  # SCORE_THRESH_TEST 0: up to DETECTIONS_PER_IMAGE boxes
        if "loss_normalizer" in pin:  # a RetinaNet keeps DETECTIONS_PER_IMAGE of its many anchors
            assert len(ours) == 100
        for (s1, c1, b1), (s2, c2, b2) in zip(ours, theirs):
            assert c1 == c2 and s1 == pytest.approx(s2, rel=1e-5)
            assert b1 == pytest.approx(b2, rel=1e-5, abs=1e-4)
