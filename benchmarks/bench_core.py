"""Benchmark the MGD core at R50 -> R18 shapes (CPU by default).

    python benchmarks/bench_core.py [--batch 2] [--repeats 5] [--device cpu] [--json PATH]

Times, with synthetic correlated features at the c2..c5 map sizes of an ~800 x 1088 input:
  * one full matching update: accumulate one batch at all four positions + solve;
  * the same update with the original's solver: a per-arc Python loop adding every arc of the
    tiled cost into OR-Tools' linear sum assignment (only when `ortools` is installed:
    pip install -r requirements-bench.txt);
  * one training step of the MGD loss with AMP reduction (forward + backward).
Figures are medians over --repeats runs after one warm-up run (the original's solver: one run
per position, as it takes seconds). On a shared machine, check the printed load average.
"""
import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

import mgd
from mgd.matching import copies_per_student

STUDENT_CHANNELS = (64, 128, 256, 512)  # R18 res2..res5
TEACHER_CHANNELS = (256, 512, 1024, 2048)  # R50 res2..res5
STRIDES = (4, 8, 16, 32)
INPUT_HW = (800, 1088)
GOAL_UPDATE_S = 0.8
GOAL_SPEEDUP = 4.0
ORTOOLS_COST_SCALE = 1e6  # OR-Tools takes integer costs; costs per image are in [0, 4]


def synthetic_features(batch: int, device: torch.device, seed: int = 0):
    """Student taps ~ N(0, 1); each teacher channel mixes 3 student channels plus noise."""
    g = torch.Generator().manual_seed(seed)
    student, teacher = [], []
    for sc, tc, stride in zip(STUDENT_CHANNELS, TEACHER_CHANNELS, STRIDES):
        h, w = INPUT_HW[0] // stride, INPUT_HW[1] // stride
        s = torch.randn(batch, sc, h, w, generator=g)
        mix = torch.zeros(tc, sc)
        for _ in range(3):
            mix[torch.arange(tc), torch.randint(sc, (tc,), generator=g)] += torch.randn(tc, generator=g)
        t = torch.einsum("ts,nshw->nthw", mix, s) + torch.randn(batch, tc, h, w, generator=g)
        student.append(s.to(device).contiguous())  # as a conv layer's output is
        teacher.append(t.to(device).contiguous())
    return student, teacher


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tiled_cost(cost: np.ndarray) -> np.ndarray:
    sc, tc = cost.shape
    k = copies_per_student(sc, tc)
    return np.tile(cost[:, : k * sc], (k, 1))


def ortools_solver():
    """OR-Tools' assignment class (new or old Python API), or None when not installed."""
    try:
        from ortools.graph.python import linear_sum_assignment as lsa

        return lambda: _NewApi(lsa.SimpleLinearSumAssignment())
    except ImportError:
        pass
    try:
        from ortools.graph import pywrapgraph

        return lambda: _OldApi(pywrapgraph.LinearSumAssignment())
    except ImportError:
        return None


class _NewApi:
    def __init__(self, solver):
        self.add_arc_with_cost, self.solve, self.right_mate = (
            solver.add_arc_with_cost, solver.solve, solver.right_mate)


class _OldApi:
    def __init__(self, solver):
        self.add_arc_with_cost, self.solve, self.right_mate = (
            solver.AddArcWithCost, solver.Solve, solver.RightMate)


def original_solve(cost: np.ndarray, make_solver) -> np.ndarray:
    """The original's approach: every arc of the tiled cost added from a Python loop."""
    tiled = tiled_cost(cost)
    n = tiled.shape[0]
    solver = make_solver()
    for row in range(n):
        for col in range(n):
            solver.add_arc_with_cost(row, col, int(tiled[row, col] * ORTOOLS_COST_SCALE))
    solver.solve()
    return np.array([solver.right_mate(row) for row in range(n)], dtype=np.int64)


def ortools_bulk_seconds(cost: np.ndarray) -> Optional[float]:
    """OR-Tools' own solve time on the tiled cost with all arcs added in one call (new API only)."""
    try:
        from ortools.graph.python import linear_sum_assignment as lsa
    except ImportError:
        return None
    tiled = tiled_cost(cost)
    n = tiled.shape[0]
    rows, cols = np.divmod(np.arange(n * n), n)
    costs = (tiled * ORTOOLS_COST_SCALE).astype(np.int64).ravel()
    solver = lsa.SimpleLinearSumAssignment()
    start = time.perf_counter()
    solver.add_arcs_with_cost(rows, cols, costs)
    solver.solve()
    return time.perf_counter() - start


def tiled_total(cost: np.ndarray, guided: np.ndarray) -> float:
    sc = cost.shape[0]
    return float(cost[np.arange(guided.size) % sc, guided].sum())


def run(batch: int, repeats: int, device: torch.device, json_path: str = "") -> int:
    torch.manual_seed(0)
    student, teacher = synthetic_features(batch, device)
    none = [None] * 5
    s_feats, t_feats = student + none, teacher + none
    distiller = mgd.MGDDistiller(STUDENT_CHANNELS + (256,) * 5, TEACHER_CHANNELS + (256,) * 5).to(device)
    distiller.update_margins([None] * 9)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"{os.cpu_count()} CPUs; batch {batch} at {INPUT_HW[0]}x{INPUT_HW[1]} input; median of {repeats} "
          f"(original: 1 run); load average at start {os.getloadavg()[0]:.2f}")
    for name, s, t in zip(("c2", "c3", "c4", "c5"), student, teacher):
        print(f"  {name}: student {list(s.shape)}  teacher {list(t.shape)}")

    def accumulate():
        distiller.reset_matching()
        distiller.accumulate_matching(s_feats, t_feats)
        _sync(device)

    def update():
        accumulate()
        return distiller.finish_matching()

    accumulate()
    costs = [c.detach().cpu().double().numpy() for c in distiller.accumulated_costs().values()]
    t_acc = median_time(accumulate, repeats, device)
    t_solve = [median_time(lambda c=c: mgd.solve_matching(torch.from_numpy(c)), repeats, device) for c in costs]
    t_update = median_time(update, repeats, device)

    make_solver = ortools_solver()
    t_orig: Optional[List[float]] = None
    if make_solver is not None:
        t_orig = []
        for c in costs:
            start = time.perf_counter()
            guided = original_solve(c, make_solver)
            t_orig.append(time.perf_counter() - start)
            ours = mgd.solve_matching(torch.from_numpy(c)).numpy()
            # the original's guided list reads the tiled rows the same way: row i*sc + j -> student j
            ref = tiled_total(np.rint(c * ORTOOLS_COST_SCALE), guided)
            mine = tiled_total(np.rint(c * ORTOOLS_COST_SCALE), ours)
            assert abs(mine - ref) <= 1e-6 * max(abs(ref), 1) + guided.size, (mine, ref)

    student_grad = [s.clone().requires_grad_(True) for s in student]

    def loss_step():
        losses = distiller(student_grad + none, t_feats)
        sum(losses.values()).backward()

    t_loss = median_time(loss_step, repeats, device)

    def amp_only():
        for i, name in enumerate(("c2", "c3", "c4", "c5")):
            mgd.reduce_teacher(teacher[i], distiller.margins()[name],
                               distiller.assignments()[name], STUDENT_CHANNELS[i], "amp")

    t_amp = median_time(amp_only, repeats, device)

    rows = [("accumulate one batch, c2..c5", t_acc, t_acc if t_orig else None)]
    for name, c, ts, i in zip(("c2", "c3", "c4", "c5"), costs, t_solve, range(4)):
        n = tiled_cost(c).shape[0]
        rows.append((f"solve {name} ({n}x{n} tiled)", ts, t_orig[i] if t_orig else None))
    orig_update = t_acc + sum(t_orig) if t_orig else None
    rows.append(("full matching update", t_update, orig_update))
    print()
    print(f"{'matching (seconds)':<34}{'mgd':>10}{'original':>12}{'ratio':>9}")
    for label, ours, orig in rows:
        o = f"{orig:12.3f}" if orig is not None else f"{'-':>12}"
        r = f"{orig / ours:8.1f}x" if orig is not None else f"{'-':>9}"
        print(f"{label:<34}{ours:10.3f}{o}{r}")
    if t_orig is None:
        print("ortools not installed, skipping comparison (pip install -r requirements-bench.txt)")
    else:
        print("original = same accumulation + per-arc Python loop into OR-Tools' linear sum assignment")
        bulk = [ortools_bulk_seconds(c) for c in costs]
        if all(b is not None for b in bulk):
            print(f"(OR-Tools alone, all arcs added in one call, c2..c5: {sum(bulk):.3f} s; "
                  f"scipy: {sum(t_solve):.3f} s)")
    print()
    print(f"{'per training step (seconds)':<34}{'mgd':>10}")
    print(f"{'AMP reduction, c2..c5':<34}{t_amp:10.3f}")
    print(f"{'GN + AMP + loss, fwd + bwd':<34}{t_loss:10.3f}")
    print()
    if json_path:  # every figure above, in seconds (None: not measured)
        figures = {"device": str(device), "batch": batch, "repeats": repeats, "accumulate_s": t_acc,
                   "solve_s": dict(zip(("c2", "c3", "c4", "c5"), t_solve)), "update_s": t_update,
                   "original_update_s": orig_update, "amp_reduction_s": t_amp, "loss_step_s": t_loss}
        with open(json_path, "w") as f:
            json.dump(figures, f, indent=1)
    ok = t_update <= GOAL_UPDATE_S
    print(f"goal: update <= {GOAL_UPDATE_S} s: {'met' if ok else 'MISSED'} ({t_update:.3f} s)")
    if orig_update is not None:
        speedup = orig_update / t_update
        print(f"goal: >= {GOAL_SPEEDUP:.0f}x faster than the original: "
              f"{'met' if speedup >= GOAL_SPEEDUP else 'MISSED'} ({speedup:.1f}x)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    return run(args.batch, args.repeats, torch.device(args.device), args.json)


if __name__ == "__main__":
    sys.exit(main())
