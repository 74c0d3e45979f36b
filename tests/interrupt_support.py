"""Ctrl-C a training the way a terminal does, at a point its progress lines name."""
import os
import re
import signal
import subprocess
from pathlib import Path

from d2_support import REPO, detectron2_env

#: a progress line: "iteration i/N, ..." once iteration i finished, "iteration i/N running for ..."
#: while iteration i runs (the heartbeat, when a step outlasts MGD_PROGRESS_SECONDS)
PROGRESS_LINE = re.compile(r"progress: iteration (\d+)/\d+(,| running for)")


def iterations_finished(line: str):
    """The iterations a progress line says have finished (None for another line)."""
    progress = PROGRESS_LINE.search(line)
    if progress is None:
        return None
    return int(progress.group(1)) - (progress.group(2) == " running for")


def _as_in_a_terminal() -> None:
    """SIGINT at its default in the command, as under a terminal: a test suite run as a background
    job of a non-interactive shell (CI, ``cmd &``) inherits SIGINT ignored, and exec keeps that,
    so make and a Python parent (train_net.py's launcher with 2 processes) would never see the
    Ctrl-C that their workers, which install their own handler, do."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(cmd, after_iterations=2, cwd=REPO, env=None):
    """Run ``cmd`` in its own process group, Ctrl-C it (SIGINT to the group, as a terminal does)
    once a progress line says ``after_iterations`` iterations have finished; returns (exit code,
    output, the iterations finished by that line's time, None if SIGINT was never sent).
    ``env``: variables added to the environment (as a shell's ``export``)."""
    env = dict(detectron2_env(), MGD_PROGRESS_SECONDS="0.2", OMP_NUM_THREADS="2", **(env or {}))
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_as_in_a_terminal)
    lines, masks = [], "(none: SIGINT was never sent)"
    try:
        for line in proc.stdout:
            lines.append(line)
            finished = iterations_finished(line)
            if finished is not None and finished >= after_iterations:
                masks = signal_dispositions(proc.pid)  # for the failure message, should one come
                os.killpg(proc.pid, signal.SIGINT)
                break
        else:
            finished = None
        lines += proc.stdout.readlines()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if not any(line.startswith("interrupted") for line in lines):
        lines.append(f"\n[test] no 'interrupted' line; the group's processes when SIGINT was sent:\n{masks}\n")
    return proc.returncode, "".join(lines), finished


def assert_stopped_promptly(done: int, finished_when_sent: int) -> None:
    """The run stopped within a few iterations of the Ctrl-C (at once, or after the update it
    held; the margin is for the test reading the pipe late), not trained on."""
    assert finished_when_sent is not None, "SIGINT was never sent"
    assert finished_when_sent <= done <= finished_when_sent + 3, (done, finished_when_sent)


def signal_dispositions(group: int) -> str:
    """Each process of process group ``group``: its command and SigBlk/SigIgn/SigCgt masks (Linux)."""
    rows = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != group:  # pgrp
                continue
            status = (stat.parent / "status").read_text()
            masks = " ".join(x.replace("\t", "") for x in status.splitlines() if x.startswith(("SigBlk", "SigIgn", "SigCgt")))
            command = (stat.parent / "cmdline").read_text().replace("\0", " ")[:100]
            rows.append(f"  {stat.parent.name} {masks} {command}")
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
    return "\n".join(rows)


#: the line that ends a Ctrl-C'd training: path, its iteration (7 digits), that iteration again,
#: the iterations done, MAX_ITER, the resume command
SAVED = re.compile(r"^interrupted: saved (\S+/model_(\d{7})\.pth) \(the state after iteration (\d+), counted from 0: "
                   r"(\d+) of (\d+) done\); resume with: (.+)$", re.M)
