"""The report of ``make gpu-check``: the machine, each step's outcome and figures, as text and JSON.

Framework-free (torch and the standard library). ``scripts/gpu_check.py`` runs the steps and
hands their results here; :func:`write_report` writes ``report.json`` and ``report.txt`` (each
through a temporary file renamed into place, so a report on disk is always whole).

A report is a dict::

    {"environment": environment(),          # GPU name, torch / CUDA / cuDNN / NCCL versions
     "steps": [StepResult.as_dict(), ...],  # in the order they ran
     "total_seconds": float}
"""
import json
import os
import platform
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch

from mgd.checkpoint.loading import load_checkpoint_object

__all__ = ["StepResult", "environment", "parse_junit", "read_training_run", "format_report", "write_report"]


@dataclass
class StepResult:
    """One step of the check: what ran, how it ended, its figures (JSON-able)."""

    name: str
    command: List[str]
    seconds: float
    returncode: Optional[int]  # None: not run (e.g. out of time)
    timed_out: bool = False
    figures: Dict = field(default_factory=dict)
    output_tail: str = ""

    @property
    def status(self) -> str:
        if self.returncode is None:
            return "not run"
        if self.timed_out:
            return "timed out"
        return "ok" if self.returncode == 0 else f"failed ({self.returncode})"

    def as_dict(self) -> dict:
        return {**asdict(self), "status": self.status}


def environment() -> dict:
    """The machine as torch sees it (CUDA entries None without CUDA)."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": None, "nccl": None, "gpus": [], "driver": None}
    if not torch.cuda.is_available():
        return env
    env["cudnn"] = torch.backends.cudnn.version()
    nccl = getattr(torch.cuda, "nccl", None)
    if nccl is not None and hasattr(nccl, "version"):
        version = nccl.version()
        env["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        env["gpus"].append({"name": props.name, "capability": f"{props.major}.{props.minor}",
                            "memory_gib": round(props.total_memory / 2 ** 30, 1),
                            "bfloat16": bool(torch.cuda.is_bf16_supported())})
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        env["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def parse_junit(path: str) -> dict:
    """{"passed", "failed", "skipped", "tests": {test name: outcome (+ ": message")}} of a pytest junit XML."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name")
        outcome, message = "passed", ""
        for tag, kind in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
            found = case.find(tag)
            if found is not None:
                text = (found.get("message") or "").strip()
                outcome, message = kind, text.splitlines()[0][:200] if text else ""
                break
        counts[outcome] += 1
        tests[name] = f"{outcome}: {message}" if message else outcome
    return {**counts, "tests": tests}


def read_training_run(run_dir: str) -> dict:
    """What a train_net.py MGD run's OUTPUT_DIR says: process-group backend, divisor, each matching
    (iteration, seconds, what it was solved from), precision, iterations, s/iteration, the last
    losses and the loss scaler's final state."""
    with open(os.path.join(run_dir, "log.txt")) as f:
        log = f.read()
    with open(os.path.join(run_dir, "metrics.json")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    final = load_checkpoint_object(os.path.join(run_dir, "model_final.pth"))  # as data, never as code
    scaler = final.get("grad_scaler") or {}

    def first(pattern: str):
        found = re.search(pattern, log, re.M)
        return found.group(1) if found else None

    return {"backend": first(r"process group backend: (\w+)"),
            "divisor": first(r"divides its summed distillation loss by (.*)$"),
            "matching_pass": first(r"MGD: each matching (.*)$"),
            "matchings": [f"iteration {it}: {s} s, from {what}" for it, s, what in re.findall(
                r"MGD matching at iteration (\d+) done in ([\d.]+)s: solved from (.*?), \d+ batches per rank", log)],
            "precision": first(r"^.*(Mixed precision \(SOLVER.AMP.ENABLED.*)$"),
            "iterations": last["iteration"] + 1, "seconds_per_iteration": last.get("time"),
            "last_losses": {k: v for k, v in sorted(last.items()) if k.startswith("loss")},
            "grad_scaler": {k: scaler[k] for k in ("scale", "_growth_tracker") if k in scaler} or "off"}


def _figure_lines(figures: dict, indent: str = "    ") -> List[str]:
    lines = []
    for key, value in figures.items():
        if isinstance(value, dict) and value and all(not isinstance(v, dict) for v in value.values()):
            lines.append(f"{indent}{key}:")
            width = max(len(str(k)) for k in value)
            lines += [f"{indent}  {str(k):<{width}}  {_fmt(v)}" for k, v in value.items()]
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            lines += _figure_lines(value, indent + "  ")
        else:
            lines.append(f"{indent}{key}: {_fmt(value)}")
    return lines


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def format_report(report: dict) -> str:
    """The text report: the machine, one line per step, then each step's figures."""
    env = report["environment"]
    gpus = "; ".join(f"{g['name']} (sm_{g['capability'].replace('.', '')}, {g['memory_gib']} GiB, "
                     f"bfloat16 {'yes' if g['bfloat16'] else 'no'})" for g in env["gpus"]) or "none"
    lines = [f"MGD gpu-check: {gpus}",
             f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, NCCL {env['nccl']}, "
             f"driver {env['driver']}, Python {env['python']}",
             f"total {report['total_seconds']:.0f} s", "",
             f"{'step':<14}{'status':<14}{'seconds':>9}  command"]
    for step in report["steps"]:
        lines.append(f"{step['name']:<14}{step['status']:<14}{step['seconds']:>9.1f}  {' '.join(step['command'])}")
    for step in report["steps"]:
        if step["figures"]:
            lines += ["", f"[{step['name']}]"] + _figure_lines(step["figures"])
        if step["status"] not in ("ok", "not run") and step["output_tail"]:
            lines += ["", f"[{step['name']}: last output]"] + ["    " + x for x in step["output_tail"].splitlines()[-30:]]
    return "\n".join(lines) + "\n"


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report(out_dir: str, report: dict) -> Dict[str, str]:
    """Write ``report.json`` and ``report.txt`` into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "report.json"), "text": os.path.join(out_dir, "report.txt")}
    _write_atomically(paths["json"], json.dumps(report, indent=1, sort_keys=False, default=str) + "\n")
    _write_atomically(paths["text"], format_report(report))
    return paths
