"""MODEL.WEIGHTS is read as data: train_net.py refuses bad or hostile checkpoints with one line."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not built here (run `make detectron2`)")

from conftest import CHECKOUT, REPO_ROOT  # noqa: E402
from scripts_support import malicious_checkpoint  # noqa: E402

CONFIG = CHECKOUT / "configs" / "COCO-Detection" / "retinanet_torchvision_R_18_FPN_1x.yaml"


def eval_only(weights: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{CHECKOUT}{os.pathsep}{REPO_ROOT}")
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "train_net.py"), "--eval-only", "--config-file", str(CONFIG),
         "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(out),
         "DATASETS.TEST", "()"],  # COCO is not here: the dataset check would refuse first
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def assert_refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    for word in words:
        assert word in last, last


@pytest.mark.parametrize("kind", ["system", "open"])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    weights = tmp_path / "hostile.pkl"
    weights.write_bytes(pickle.dumps(malicious_checkpoint(marker, kind), protocol=4))
    assert_refused(eval_only(weights, tmp_path / "out"))
    assert not marker.exists()


def test_missing_and_truncated_weights_are_refused(tmp_path):
    assert_refused(eval_only(tmp_path / "absent.pkl", tmp_path / "out"), "absent.pkl")
    truncated = tmp_path / "truncated.pkl"
    good = pickle.dumps({"model": {"stem.conv1.weight": [1.0] * 64}, "__author__": "x"}, protocol=4)
    truncated.write_bytes(good[: len(good) // 2])
    assert_refused(eval_only(truncated, tmp_path / "out"), "truncated.pkl")
