#!/usr/bin/env python
"""MGD training step and matching pass: time and peak memory against their floors.

Variants, measured side by side in one run (repetitions interleaved; medians reported):

* ``mgd``    - this project's step: one student training forward that also yields the taps,
               the teacher's bottom-up only under no_grad, loss, backward, SGD step;
* ``floor``  - what any implementation must do: the student-only training step (forward,
               backward, SGD step) plus the teacher's bottom-up forward under no_grad;
* ``double`` - the original's way: student full forward then its backbone again, teacher
               full inference (NMS included, result dropped) then its backbone again, loss,
               backward, SGD step;
* ``mgd_bf16``, ``floor_bf16``, ``mgd_fp16``, ``floor_fp16`` - ``mgd`` and ``floor`` with the
               forwards under mixed precision (``SOLVER.AMP.ENABLED`` with
               ``SOLVER.AMP.PRECISION`` bfloat16 / float16), float16 with its GradScaler
               (scale, backward, unscale + step, update) as MGDTrainer trains it.

Matching pass (per batch, eval mode, no grad): ``match`` (this project's
``accumulate_matching``) vs ``match_floor`` (the two bottom-up forwards only) vs
``match_orig`` (teacher full inference + both backbones, as the original ran it), and
``match_bf16`` / ``match_fp16`` (``match`` with the forwards autocast).

Peak memory: each variant runs in its own fresh process, with glibc told to map every
allocation >= 64 KiB separately and unmap it when freed (MALLOC_MMAP_THRESHOLD_), so the
resident set follows the live tensors; the figure is the process's peak resident set (VmHWM)
during one step minus its resident set just before it (after a warm-up step).

    python benchmarks/bench_step.py [--detector retinanet|faster_rcnn] [--size 320] [--batch 2] [--reps 7] [--device cuda]
        [--precisions float16,bfloat16] [--json PATH]
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time

from mgd.bootstrap import use_detectron2_with_overlay
from mgd.runtime import apply_runtime_defaults

apply_runtime_defaults()  # as train_net.py: the step measured is the step trained (PYTORCH_JIT=0)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
use_detectron2_with_overlay(ROOT)  # the checkout `make` names (DETECTRON2=pin|latest), refreshed overlay

import torch  # noqa: E402

import detectron2.modeling.backbone.mgd_resnet  # noqa: F401,E402
import detectron2.modeling.meta_arch.mgd_retinanet  # noqa: F401,E402
from detectron2.modeling.meta_arch.mgd_detector import autocast  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from mgd.config import add_mgd_config  # noqa: E402

#: the published MGD config of each detector (--detector), as `make distill DETECTOR=...` trains it
CONFIGS = {detector: os.path.join(ROOT, "detectron2", "configs", "COCO-Detection", f"mgd_{detector}_R50_R18_FPN_1x.yaml")
           for detector in ("retinanet", "faster_rcnn")}


def build(device, detector="retinanet"):
    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(CONFIGS[detector])
    cfg.MODEL.DEVICE = device
    torch.manual_seed(0)
    model = build_model(cfg)
    d = model.distiller
    model.update_margins()
    g = torch.Generator().manual_seed(0)  # a matching from random features: cheap to solve
    d.reset_matching()
    d.accumulate_matching(
        [torch.randn(2, c, 4, 4, generator=g).to(device) if i in d.distilled_positions else None
         for i, c in enumerate(d.student_channels)],
        [torch.randn(2, c, 4, 4, generator=g).to(device) if i in d.distilled_positions else None
         for i, c in enumerate(d.teacher_channels)])
    d.finish_matching()
    return model


def make_batch(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        inst = Instances((size, size))
        xy = torch.rand(4, 2, generator=g) * size * 0.6
        inst.gt_boxes = Boxes(torch.cat([xy, xy + 16 + torch.rand(4, 2, generator=g) * size * 0.3], 1))
        inst.gt_classes = torch.randint(0, 80, (4,), generator=g)
        batch.append({"image": torch.rand(3, size, size, generator=g) * 255, "instances": inst,
                      "height": size, "width": size})
    return batch


def _backbone_taps_original(net, images, keys):
    """The original's second backbone pass (bottom-up with taps)."""
    bu = net.backbone.bottom_up
    bu.expose_taps = True
    try:
        out = bu(images)
    finally:
        bu.expose_taps = False
    return {k: out[k] for k in keys}


def step_mgd(model, opt, batch):
    losses = model(batch)
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()


def step_floor(model, opt, batch):
    losses = model.s_net(batch)
    with torch.no_grad():
        model.t_net.backbone.bottom_up(model.t_net.preprocess_image(batch).tensor)
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()


def step_double(model, opt, batch):
    keys = model._wanted
    losses = model.s_net(batch)
    s_taps = _backbone_taps_original(model.s_net, model.s_net.preprocess_image(batch).tensor, keys)
    with torch.no_grad():
        model.t_net(batch)  # full inference, dropped
        t_taps = _backbone_taps_original(model.t_net, model.t_net.preprocess_image(batch).tensor, keys)
    per = model.distiller(model._position_list(s_taps), model._position_list(t_taps))
    losses["loss_distill"] = sum(per.values()) / model.loss_divisor
    opt.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    opt.step()


@torch.no_grad()
def match_mgd(model, opt, batch):
    model.accumulate_matching(batch)


@torch.no_grad()
def match_floor(model, opt, batch):
    model.s_net.backbone.bottom_up(model.s_net.preprocess_image(batch).tensor)
    model.t_net.backbone.bottom_up(model.t_net.preprocess_image(batch).tensor)


@torch.no_grad()
def match_orig(model, opt, batch):
    model.t_net(batch)  # the original ran the teacher's whole inference per tracking batch
    keys = model._wanted
    s = _backbone_taps_original(model.s_net, model.s_net.preprocess_image(batch).tensor, keys)
    t = _backbone_taps_original(model.t_net, model.t_net.preprocess_image(batch).tensor, keys)
    model.distiller.accumulate_matching(model._position_list(s), model._position_list(t))


STEPS = {"mgd": step_mgd, "floor": step_floor, "double": step_double}
MATCHES = {"match": match_mgd, "match_floor": match_floor, "match_orig": match_orig}


def floor_of(name: str) -> str:
    """The variant ``name`` is compared with: its precision's floor (the matching: float32's)."""
    if name.startswith(("mgd_", "floor_")):
        return "floor_" + name.split("_", 1)[1]
    return "floor" if name in STEPS else "match_floor"


PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_NAMES = {"bfloat16": "bf16", "float16": "fp16"}


def _amp_backward_and_step(model, opt, losses, scaler):
    total = sum(loss.float() for loss in losses.values())
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        total.backward()
        opt.step()
    else:  # float16: as MGDTrainer.run_step
        scaler.scale(total).backward()
        scaler.step(opt)
        scaler.update()


def amp_variants(precisions, device):
    """{name: step} for each precision: mgd_<p>, floor_<p> (training) and match_<p> (matching)."""
    steps, matches = {}, {}
    for short in precisions:
        dtype = PRECISIONS[short]
        scaler = torch.amp.GradScaler(device.split(":")[0]) if dtype == torch.float16 else None

        def mgd_step(model, opt, batch, dtype=dtype, scaler=scaler):
            with autocast(model.device, True, dtype):
                losses = model(batch)
            _amp_backward_and_step(model, opt, losses, scaler)

        def floor_step(model, opt, batch, dtype=dtype, scaler=scaler):
            with autocast(model.device, True, dtype):
                losses = model.s_net(batch)
                with torch.no_grad():
                    model.t_net.backbone.bottom_up(model.t_net.preprocess_image(batch).tensor)
            _amp_backward_and_step(model, opt, losses, scaler)

        @torch.no_grad()
        def match_step(model, opt, batch, dtype=dtype):
            model.amp_enabled, model.amp_dtype = True, dtype
            try:
                model.accumulate_matching(batch)
            finally:
                model.amp_enabled = False

        steps[f"mgd_{short}"], steps[f"floor_{short}"], matches[f"match_{short}"] = mgd_step, floor_step, match_step
    return steps, matches


def variants(precisions, device):
    """(steps, matches): {name: fn(model, opt, batch)}, float32's then each precision's."""
    steps, matches = amp_variants([PRECISION_NAMES[p] for p in precisions], device)
    return {**STEPS, **steps}, {**MATCHES, **matches}


def _mode(model, name):
    if name.startswith("match"):
        model.eval()
    else:
        model.train()


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _measure_peak(name, args):
    """In a fresh process: build, one warm-up step, then the peak RSS growth of one step."""
    model = build(args.device, args.detector)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    batch = make_batch(args.batch, args.size)
    steps, matches = variants(_precisions(args), args.device)
    fn = {**steps, **matches}[name]
    _mode(model, name)
    with EventStorage():
        fn(model, opt, copy.deepcopy(batch))
        data = copy.deepcopy(batch)
        before = _rss_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS
            f.write("5")
        fn(model, opt, data)
        print(f"PEAK_MIB {(_rss_kib('VmHWM') - before) / 1024.0:.1f}")


def peak_memory_mib(name, args):
    """Peak memory of one variant, measured in its own process (fork after OpenMP hangs)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--peak-of", name, "--detector", args.detector, "--size", str(args.size),
           "--batch", str(args.batch), "--device", args.device, "--precisions", args.precisions]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    # every allocation of 64 KiB or more gets its own mapping, returned to the OS when freed:
    # the resident set then follows the live tensors instead of the allocator's cache
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True,
                         env=env).stdout
    return float(out.split("PEAK_MIB")[-1].split()[0])


def _precisions(args):
    names = [p for p in args.precisions.split(",") if p]
    unknown = sorted(set(names) - set(PRECISION_NAMES))
    if unknown:
        raise SystemExit(f"error: --precisions takes {', '.join(PRECISION_NAMES)}, got {', '.join(unknown)}")
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detector", choices=sorted(CONFIGS), default="retinanet",
                        help="whose published MGD config is measured (default retinanet)")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="bfloat16,float16",
                        help="mixed precisions measured besides float32 (comma-separated; '' for none)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated variants to run (default: all)")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    parser.add_argument("--peak-of", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = _precisions(args)
    if args.peak_of:
        return _measure_peak(args.peak_of, args)

    on_cuda = args.device.startswith("cuda")
    model = build(args.device, args.detector)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    batch = make_batch(args.batch, args.size)
    steps, matches = variants(precisions, args.device)
    table = {**steps, **matches}
    names = list(table)
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    times = {n: [] for n in names}
    cuda_peak = {n: [] for n in names}
    with EventStorage():
        for name in names:  # warm-up (TorchScript, allocator, cuDNN)
            _mode(model, name)
            table[name](model, opt, copy.deepcopy(batch))
        for _ in range(args.reps):
            for name in names:
                _mode(model, name)
                data = copy.deepcopy(batch)
                _sync(args.device)
                if on_cuda:
                    base = torch.cuda.memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                table[name](model, opt, data)
                _sync(args.device)
                times[name].append(time.perf_counter() - start)
                if on_cuda:
                    cuda_peak[name].append((torch.cuda.max_memory_allocated() - base) / 2 ** 20)
    med = {n: statistics.median(v) for n, v in times.items()}
    mem = {}
    if on_cuda:
        mem = {n: max(v) for n, v in cuda_peak.items()}
    elif not args.no_memory and sys.platform.startswith("linux"):
        mem = {n: peak_memory_mib(n, args) for n in names}

    device_name = torch.cuda.get_device_name(torch.device(args.device)) if on_cuda else "cpu"
    detector = {"retinanet": "RetinaNet", "faster_rcnn": "Faster R-CNN"}[args.detector]
    print(f"MGD R50 -> R18 ({detector}, c2..c5), {args.batch} images {args.size}x{args.size}, "
          f"device {args.device} ({device_name}), {torch.get_num_threads()} threads, {args.reps} interleaved reps, "
          f"medians; peak memory: {'CUDA allocated' if on_cuda else 'resident set'} above the step's start")
    print(f"{'variant':<13}{'time s':>9}{'vs floor':>10}{'peak MiB':>10}{'mem vs floor':>14}")

    def ratio(table, a, b):
        return table[a] / table[b] if a in table and b in table else float("nan")

    for name in names:
        floor = floor_of(name)
        m = f"{mem[name]:>10.0f}{ratio(mem, name, floor):>13.2f}x" if mem else f"{'-':>10}{'-':>14}"
        print(f"{name:<13}{med[name]:>9.3f}{ratio(med, name, floor):>9.2f}x{m}")
    print(f"double pass / mgd step: {ratio(med, 'double', 'mgd'):.2f}x slower;  "
          f"original matching / mgd matching: {ratio(med, 'match_orig', 'match'):.2f}x slower")
    for precision in precisions:
        p = PRECISION_NAMES[precision]
        print(f"mixed precision ({precision}{', GradScaler' if p == 'fp16' else ''}): mgd step "
              f"{ratio(med, f'mgd_{p}', 'mgd'):.2f}x the float32 step, floor {ratio(med, f'floor_{p}', 'floor'):.2f}x, "
              f"matching {ratio(med, f'match_{p}', 'match'):.2f}x (step rows against floor_{p}; match_{p} "
              "against the float32 match_floor)")
    goals = [  # (label, measured ratio, limit, the ratio must be <= limit?)
        ("step <= 1.10x floor", ratio(med, "mgd", "floor"), 1.10, True),
        ("double pass >= 1.6x slower than step", ratio(med, "double", "mgd"), 1.6, False),
        ("matching <= 1.10x floor", ratio(med, "match", "match_floor"), 1.10, True),
    ]
    for precision in precisions:
        p = PRECISION_NAMES[precision]
        goals += [(f"{precision} step <= 1.10x its floor", ratio(med, f"mgd_{p}", f"floor_{p}"), 1.10, True),
                  (f"{precision} gain on the step >= the floor's",
                   ratio(med, "mgd", f"mgd_{p}") / ratio(med, "floor", f"floor_{p}"), 1.0, False)]
    if mem:
        goals.append(("step peak memory <= 1.15x floor", ratio(mem, "mgd", "floor"), 1.15, True))
    verdicts = [f"{label}: {'met' if (r <= lim if upper else r >= lim) else 'NOT met'} ({r:.2f}x)"
                for label, r, lim, upper in goals if r == r]  # skip variants not run (nan)
    print("goals: " + "; ".join(verdicts))
    if args.json:
        figures = {"detector": args.detector, "device": args.device, "device_name": device_name, "threads": torch.get_num_threads(),
                   "size": args.size, "batch": args.batch, "reps": args.reps, "precisions": precisions,
                   "seconds": med, "peak_mib": mem, "vs_floor": {n: ratio(med, n, floor_of(n)) for n in names},
                   "goals": verdicts}
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
