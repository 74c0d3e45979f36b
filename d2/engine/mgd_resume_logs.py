"""The run's JSON-lines logs cut back to the checkpoint a ``--resume`` starts from.

An interrupted training logs past its last checkpoint; resumed from that checkpoint, it logs
those iterations again. :func:`forget_logs_after` removes the later iterations' lines from
:data:`ITERATION_LOGS` (rewritten atomically) before the resumed run starts, so each iteration
is logged once; lines without an ``"iteration"`` are kept.
"""
import json
import os
from typing import Optional

__all__ = ["forget_logs_after", "ITERATION_LOGS"]


#: the run's logs of one JSON object per line with an "iteration"
ITERATION_LOGS = ("metrics.json", "mgd_matching.json")


def forget_logs_after(output_dir: str, iteration: int) -> Optional[str]:
    """For ``--resume`` from the checkpoint of ``iteration``: remove from the run's JSON-lines
    logs (:data:`ITERATION_LOGS`) the lines of later iterations, which the resumed run repeats
    (an interrupted run logs past its last checkpoint), so each iteration is logged once.
    Files are rewritten atomically. Returns one line saying what was removed, or None."""
    removed = []
    for name in ITERATION_LOGS:
        path = os.path.join(output_dir, name)
        try:
            with open(path) as f:
                lines = f.read().splitlines(keepends=True)
        except OSError:
            continue
        kept = [line for line in lines if _logged_iteration(line) <= iteration]
        if len(kept) == len(lines):
            continue
        with open(path + ".part", "w") as f:
            f.writelines(kept)
        os.replace(path + ".part", path)
        removed.append(f"{len(lines) - len(kept)} of {name}")
    if not removed:
        return None
    return (f"--resume from the state after iteration {iteration}: the lines of later iterations, which this run "
            f"repeats, were removed ({', '.join(removed)})")


def _logged_iteration(line: str) -> float:
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return float("-inf")  # not a line of an iteration: kept
