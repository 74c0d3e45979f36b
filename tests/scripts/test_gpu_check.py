"""`make gpu-check` on a machine without CUDA, and its report (mgd.gpu_report), on CPU.

* without CUDA: one line, exit 0, nothing written (the script and the make target);
* the report writer: JSON and text hold the machine and every step's figures; files are whole;
* the junit reader against a hand-written file;
* the NCCL-run step's worker on CPU (a one-rank gloo group stands in for NCCL) and what
  ``read_training_run`` reads from its real outputs.
"""
import json
import os
import subprocess
import sys

import pytest

from mgd.gpu_report import StepResult, environment, format_report, parse_junit, read_training_run, write_report
from d2_support import REPO

NO_CUDA_LINE = "gpu-check: no CUDA device here (torch.cuda.is_available() is False): nothing to check\n"


def _no_cuda_env():
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))


@pytest.mark.parametrize("how", ["script", "make"])
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path, how):
    out = tmp_path / "report"
    command = ([sys.executable, "scripts/gpu_check.py", "--out", str(out)] if how == "script"
               else ["make", "-s", "gpu-check", f"OUTPUT_DIR={tmp_path}", f"PYTHON={sys.executable}"])
    proc = subprocess.run(command, cwd=REPO, env=_no_cuda_env(), capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, NO_CUDA_LINE, "")
    assert not out.exists() and not (tmp_path / "gpu-check").exists()


def _report():
    env = dict(environment(), cuda="13.0", cudnn=91000, nccl="2.27.3", driver="580.1",
               gpus=[{"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "memory_gib": 79.2, "bfloat16": True}])
    steps = [
        StepResult("build", ["make", "detectron2"], 61.5, 0, figures={"detectron2_ops": ["CUDA 13.0"]}),
        StepResult("gpu-tests", ["pytest"], 95.25, 1, figures={"passed": 6, "failed": 1, "skipped": 0,
                                                                "tests": {"test_nms": "failed: boom"}},
                   output_tail="line 1\nE   AssertionError: boom"),
        StepResult("bench-step", ["bench_step.py"], 40.0, 0, figures={
            "seconds": {"mgd": 0.0612, "mgd_fp16": 0.0311, "mgd_bf16": 0.0323}, "size": 320}),
        StepResult("nccl-run", ["gpu_check.py"], 150.0, -9, timed_out=True, output_tail="iteration 2"),
        StepResult("late", ["x"], 0.0, None),
    ]
    return {"environment": env, "steps": [s.as_dict() for s in steps], "total_seconds": 346.75}


def test_report_holds_the_machine_and_every_figure(tmp_path):
    report = _report()
    paths = write_report(str(tmp_path / "out"), report)
    assert sorted(os.listdir(tmp_path / "out")) == ["report.json", "report.txt"]  # no temporary file left
    assert json.loads(open(paths["json"]).read()) == report
    text = open(paths["text"]).read()
    assert text == format_report(report)
    assert text.splitlines()[0] == "MGD gpu-check: NVIDIA H100 80GB HBM3 (sm_90, 79.2 GiB, bfloat16 yes)"
    assert f"torch {report['environment']['torch']}, CUDA 13.0, cuDNN 91000, NCCL 2.27.3, driver 580.1" in text
    for line in ("build         ok                 61.5  make detectron2",
                 "gpu-tests     failed (1)         95.2  pytest",
                 "nccl-run      timed out         150.0  gpu_check.py",
                 "late          not run             0.0  x"):
        assert line in text
    for figure in ("detectron2_ops: CUDA 13.0", "passed: 6", "test_nms  failed: boom", "mgd       0.0612",
                   "mgd_fp16  0.0311", "mgd_bf16  0.0323", "size: 320"):
        assert figure in text, figure
    assert "E   AssertionError: boom" in text and "iteration 2" in text  # failures show their output


def test_environment_without_cuda():
    env = environment()
    assert env["torch"] and (env["cuda"] is None or isinstance(env["cuda"], str))
    if not env["gpus"]:
        assert env["cudnn"] is None and env["nccl"] is None


def test_junit_reader(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text("""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="4">
<testcase classname="tests.test_gpu" name="test_a" time="1.0"/>
<testcase classname="tests.test_gpu" name="test_b" time="1.0"><failure message="assert 1 == 2&#10;more">trace</failure></testcase>
<testcase classname="tests.test_gpu" name="test_c" time="0.0"><skipped message="no CUDA device here"/></testcase>
<testcase classname="tests.test_gpu" name="test_d" time="0.0"><error message="fixture failed"/></testcase>
</testsuite></testsuites>""")
    assert parse_junit(str(path)) == {"passed": 1, "failed": 2, "skipped": 1, "tests": {
        "test_a": "passed", "test_b": "failed: assert 1 == 2", "test_c": "skipped: no CUDA device here",
        "test_d": "failed: fixture failed"}}


@pytest.mark.detectron2
@pytest.mark.slow
def test_the_nccl_run_worker_on_cpu_and_what_the_report_reads_of_it(tmp_path):
    """Without CUDA the worker trains in a one-rank gloo group: train_net.py's main, 4 iterations,
    matchings at 0 and 3, each from (15 + 1) x 4 / 8 = 8 images."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--nccl-run", str(tmp_path)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    run = read_training_run(str(tmp_path / "run"))
    assert run["backend"] == "gloo"
    assert run["divisor"].startswith("IMS_PER_BATCH 4 x MGD.REFERENCE_WORLD_SIZE 8 / 1 processes = 32:")
    assert run["matching_pass"].startswith("draws 2 batches per process and is solved from")
    assert [m.split(":")[0] for m in run["matchings"]] == ["iteration 0", "iteration 3"]
    assert all(m.endswith("from 8 images from rank 0 of 1 (ranks 'all')") for m in run["matchings"])
    assert run["iterations"] == 4 and run["precision"] is None and run["grad_scaler"] == "off"
    assert set(run["last_losses"]) == {"loss_cls", "loss_box_reg", "loss_distill"}
