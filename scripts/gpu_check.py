#!/usr/bin/env python
"""`make gpu-check`: on a CUDA machine, build, test and measure the GPU path in one command.

Steps (each timed, each with its share of --budget seconds; a report is written whatever fails):
build (`make detectron2`: CUDA ops when torch sees a GPU, then `make overlay`), gpu-tests
(tests/d2/test_gpu.py), bench-core and bench-step (float32 / float16 / bfloat16), nccl-run (a few
MGD iterations of train_net.py's main in a one-rank NCCL process group, float16 AMP, on a tiny
synthetic set). The report: OUT/report.txt and OUT/report.json (mgd.gpu_report). Without CUDA
it says so in one line and exits 0.

    python scripts/gpu_check.py [--out output/gpu-check] [--budget 450] [--skip-build]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

from mgd.gpu_report import StepResult, environment, parse_junit, read_training_run, write_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NCCL_OPTS = ["SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", "6", "SOLVER.WARMUP_ITERS", "2", "SOLVER.AMP.ENABLED", "True",
             "MGD.UPDATE_ITER", "15", "MGD.UPDATE_FREQ", "[3, 6]", "MGD.UPDATE_SLOW_STEP", "[100]",
             "DATASETS.TEST", "()", "MODEL.DEVICE", "cuda"]  # matchings at 0 and 3, each (15 + 1) x 4 / 8 = 8 images


def run_step(name, command, seconds_left, cap, figures=None):
    """Run ``command`` from the repository root with a timeout; its StepResult (figures filled by ``figures``)."""
    limit = min(cap, seconds_left())
    if limit < 10:
        return StepResult(name, command, 0.0, None)
    print(f"gpu-check: {name}: {' '.join(command)} (at most {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=limit)
        result = StepResult(name, command, time.perf_counter() - start, proc.returncode, output_tail=proc.stdout[-6000:])
    except subprocess.TimeoutExpired as error:
        tail = (error.stdout or b"")[-6000:]
        result = StepResult(name, command, time.perf_counter() - start, -9, True,
                            output_tail=tail.decode(errors="replace") if isinstance(tail, bytes) else tail)
    if figures is not None:
        try:
            result.figures = figures(result)
        except Exception as error:  # noqa: BLE001 (whatever a failed step left, the report is written)
            result.figures = {"unreadable": f"{type(error).__name__}: {error}"}
    print(f"gpu-check: {name}: {result.status} in {result.seconds:.0f} s", flush=True)
    return result


def nccl_run(run_dir):
    """Worker (--nccl-run): synthetic set, random MGD weights, then train_net's main in a 1-rank NCCL
    group (without CUDA, for tests: a 1-rank gloo group on CPU, float32)."""
    import torch
    import torch.multiprocessing as mp
    import train_net
    from detectron2.engine.launch import _distributed_worker, _find_free_port
    from detectron2.engine.mgd_launch import _cpu_worker
    from detectron2.engine.mgd_config_file import load_config
    from detectron2.engine.mgd_setup import check_run
    from detectron2.modeling import build_model

    cuda = torch.cuda.is_available()
    opts = NCCL_OPTS if cuda else NCCL_OPTS[:-2] + ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "False",
                                                    "SOLVER.MAX_ITER", "4", "MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]"]

    data = os.path.join(run_dir, "data")
    os.makedirs(run_dir, exist_ok=True)
    subprocess.run([sys.executable, "scripts/make_synthetic_coco.py", "--out", data, "--train", "32", "--val", "8",
                    "--size", "96"], cwd=REPO, check=True)
    config = os.path.join(REPO, "configs", "demo_mgd_R50_R18.yaml")
    torch.manual_seed(0)
    weights = os.path.join(run_dir, "random_mgd.pth")
    torch.save({"model": build_model(load_config(config, ["MODEL.DEVICE", "cpu"])).state_dict()}, weights)
    argv = [a for split in ("train", "val") for a in ("--dataset", f"mgd_synth_{split}",
            os.path.join(data, "annotations", f"instances_{split}.json"), os.path.join(data, split))]
    args = train_net.build_parser().parse_args(argv + ["--config-file", config, *opts, "MODEL.WEIGHTS", weights,
                                                       "OUTPUT_DIR", os.path.join(run_dir, "run")])
    check_run(args)
    url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.spawn(_distributed_worker if cuda else _cpu_worker, nprocs=1, args=(_main_logging_backend, 1, 1, 0, url, (args,)),
             daemon=False)


def _main_logging_backend(args):
    import logging

    import torch.distributed as dist
    import train_net

    print(f"process group backend: {dist.get_backend()}", flush=True)
    result = train_net.main(args)
    logging.getLogger("detectron2").info(f"process group backend: {dist.get_backend()}")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("output", "gpu-check"))
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all the steps (default 450)")
    parser.add_argument("--skip-build", action="store_true", help="do not run `make detectron2` / `make overlay`")
    parser.add_argument("--nccl-run", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.nccl_run:
        return nccl_run(args.nccl_run)
    import torch
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False): nothing to check")
        return 0
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    left = lambda: args.budget - (time.perf_counter() - start)  # noqa: E731
    py = sys.executable
    steps = []
    if not args.skip_build:
        ops = "from mgd.bootstrap import use_detectron2; use_detectron2('.'); from detectron2 import _C; print('ops:', _C.get_cuda_version())"
        steps.append(run_step("build", ["bash", "-c", f"make detectron2 && make overlay && {py} -c \"{ops}\""], left, 300,
                              lambda r: {"detectron2_ops": re.findall(r"^ops: (.*)", r.output_tail, re.M)[-1:]}))
    junit = os.path.join(out, "gpu-tests.xml")
    steps.append(run_step("gpu-tests", [py, "-m", "pytest", "tests/d2/test_gpu.py", "-q", "-rA", "-p", "no:cacheprovider",
                                        f"--junitxml={junit}"], left, 240, lambda r: parse_junit(junit)))
    core, step = os.path.join(out, "bench_core.json"), os.path.join(out, "bench_step.json")
    steps.append(run_step("bench-core", [py, "benchmarks/bench_core.py", "--device", "cuda", "--json", core], left, 90,
                          lambda r: json.load(open(core))))
    precisions = "float16,bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    steps.append(run_step("bench-step", [py, "benchmarks/bench_step.py", "--device", "cuda", "--reps", "5",
                                         "--precisions", precisions, "--json", step], left, 150,
                          lambda r: json.load(open(step))))
    nccl = os.path.join(out, "nccl")
    steps.append(run_step("nccl-run", [py, "scripts/gpu_check.py", "--nccl-run", nccl], left, 180, lambda r: read_training_run(os.path.join(nccl, "run"))))
    report = {"environment": environment(), "steps": [s.as_dict() for s in steps], "total_seconds": time.perf_counter() - start}
    paths = write_report(out, report)
    print(open(paths["text"]).read())
    print(f"gpu-check: report in {paths['text']} and {paths['json']}")
    return 0 if all(s.status == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
