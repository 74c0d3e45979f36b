"""Two "machines" on the loopback address train MGD in step (train_net.py, gloo, CPU).

What a 16+ GPU job does across nodes: one ``train_net.py`` per machine with
``--num-machines 2 --machine-rank 0|1 --dist-url tcp://<rank 0's host>:<port>``; here each
machine runs one CPU process (``--num-gpus 1``) and writes its own OUTPUT_DIR, as nodes
without a shared file system would.
"""
import re
import socket
import subprocess
import sys

import pytest

from d2_support import (
    CHECKOUT_ENV,
    REPO,
    TINY_INPUT,
    config_dir,
    detectron2_env,
    import_overlay,
    load_cfg,
    make_synthetic_dataset,
    synthetic_dataset_args,
)

pytestmark = [pytest.mark.detectron2, pytest.mark.slow, pytest.mark.latest_pass]

FAST_MGD = TINY_INPUT + [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.MAX_ITER", "2",
    "MGD.UPDATE_ITER", "7", "MGD.UPDATE_FREQ", "[100, 100]", "MGD.UPDATE_SLOW_STEP", "[100]",
    "MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]", "DATASETS.TEST", "()",
]
ASSIGNMENT = re.compile(r"solved from (\d+) images from ranks 0-1 of 2 .*\(rank (\d), assignment digest (\w+)\)")
# 2 images x MGD.REFERENCE_WORLD_SIZE 8 / 2 processes: the global process count, not the per-machine one
DIVISOR = "IMS_PER_BATCH 2 x MGD.REFERENCE_WORLD_SIZE 8 / 2 processes = 8:"
PARAMETERS = re.compile(r"trainable parameter digest (\w+) \(rank (\d)\) after iteration (\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _initial_weights(tmp_path):
    """A randomly initialised MGD model (teacher and student) as MODEL.WEIGHTS."""
    import torch

    import_overlay()
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(load_cfg(tmp_path, "demo_mgd_R50_R18.yaml", FAST_MGD))
    path = tmp_path / "initial.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def test_two_machines_on_loopback_train_in_step(tmp_path):
    synth = make_synthetic_dataset(tmp_path / "synth")
    cfg = config_dir(tmp_path) / "demo_mgd_R50_R18.yaml"
    weights = _initial_weights(tmp_path)
    url = f"tcp://127.0.0.1:{_free_port()}"
    env = {**{k: v for k, v in detectron2_env().items() if k in ("PYTHONPATH", CHECKOUT_ENV)},
           "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    machines = []
    for rank in (0, 1):
        command = [sys.executable, str(REPO / "train_net.py"), *synthetic_dataset_args(synth),
                   "--num-machines", "2", "--machine-rank", str(rank), "--num-gpus", "1", "--dist-url", url,
                   "--config-file", str(cfg), *FAST_MGD, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / f"machine{rank}")]
        machines.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True))
    outputs = []
    try:
        for proc in machines:
            outputs.append(proc.communicate(timeout=900)[0])
    finally:
        for proc in machines:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, out) in enumerate(zip(machines, outputs)):
        assert proc.returncode == 0, f"machine {rank} failed:\n{out[-4000:]}"

    # each machine's process logs into its own OUTPUT_DIR: rank 0 log.txt, rank 1 log.txt.rank1
    logs = {0: (tmp_path / "machine0" / "log.txt").read_text(),
            1: (tmp_path / "machine1" / "log.txt.rank1").read_text()}
    assert not (tmp_path / "machine0" / "log.txt.rank1").exists()  # two machines, not one
    assert all(DIVISOR in text for text in logs.values())
    # (7 + 1) x 2 / 8 = 2 images per matching: one batch, one image from each machine
    assignment = {rank: ASSIGNMENT.findall(text) for rank, text in logs.items()}
    assert assignment[0] == [("2", "0", assignment[0][0][2])] and assignment[1] == [("2", "1", assignment[1][0][2])]
    assert assignment[0][0][2] == assignment[1][0][2]  # same matching on both machines
    parameters = {rank: PARAMETERS.findall(text) for rank, text in logs.items()}
    assert parameters[0] == [(parameters[0][0][0], "0", "1")], parameters
    assert parameters[1] == [(parameters[1][0][0], "1", "1")], parameters
    assert parameters[0][0][0] == parameters[1][0][0]  # same student after two steps
    assert "all 2 ranks hold the same trainable parameters" in logs[0]
    assert (tmp_path / "machine0" / "model_final.pth").exists()
    assert not (tmp_path / "machine1" / "model_final.pth").exists()  # only rank 0 saves
