#!/usr/bin/env python
"""Run the pinned Detectron2's own tests and compare the outcome with the expected failures.

Usage: python scripts/run_detectron2_tests.py CHECKOUT EXPECTED_FAILURES [PYTEST_ARGS...]

EXPECTED_FAILURES lists pytest node ids (relative to CHECKOUT), each followed by its reason;
a module path alone (``tests/x.py``) is a module that cannot be collected (e.g. it imports a
package this project does not install); ``#`` starts a comment. Exit status 0 when exactly the listed tests fail (a listed test that is
skipped, e.g. a CUDA test without a GPU, is fine); 1 when another test fails or errors, or a
listed test passes (then the list is stale: delete its line); 2 on bad input. The outcome is
one summary line; pytest's own output goes to CHECKOUT/tests.log.

Every test starts from the same random state (Python, NumPy and torch seeded with 0 by a
small plugin), so an outcome is reproducible: some of the pin's tests draw unseeded random
boxes and compare two NMS implementations with a tolerance that ties at the IoU threshold
exceed now and then (upstream later widened it).
"""
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Tuple


def read_expected(path: Path) -> Dict[str, str]:
    """Node id -> reason."""
    expected = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        node_id, _, reason = line.partition(" ")
        if ("::" not in node_id and not node_id.endswith(".py")) or not reason.strip():
            raise ValueError(f"{path}:{number}: expected '<pytest node id or module> <reason>', got {line[:80]!r}")
        expected[node_id] = reason.strip()
    return expected


def node_id(checkout: Path, classname: str, name: str) -> str:
    """pytest node id from a JUnit test case: 'tests.data.test_x.TestY' + 'test' -> 'tests/data/test_x.py::TestY::test'."""
    if not classname:  # a module that failed to collect: its dotted name
        module = Path(*name.split(".")).with_suffix(".py")
        return module.as_posix() if (checkout / module).is_file() else name
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        module = Path(*parts[:i]).with_suffix(".py")
        if (checkout / module).is_file():
            return "::".join([module.as_posix()] + parts[i:] + [name])
    return "::".join([classname, name]) if classname else name


def outcomes(checkout: Path, junit: Path) -> Dict[str, str]:
    """Node id -> 'passed' | 'failed' | 'skipped' (errors count as failed)."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        result[node_id(checkout, case.get("classname", ""), case.get("name", ""))] = outcome
    return result


def compare(expected: Dict[str, str], seen: Dict[str, str]) -> Tuple[List[str], List[str]]:
    """(unexpected failures, listed failures that now pass)."""
    unexpected = sorted(t for t, o in seen.items() if o == "failed" and t not in expected)
    now_passing = sorted(t for t in expected if seen.get(t) == "passed")
    return unexpected, now_passing


SEED_PLUGIN = """\
import random

import numpy
import pytest
import torch


@pytest.fixture(autouse=True)
def _mgd_same_random_state_for_every_test():
    random.seed(0)
    numpy.random.seed(0)
    torch.manual_seed(0)
"""


def main(argv: List[str]) -> int:
    if len(argv) < 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    checkout, expected_path = Path(argv[1]).resolve(), Path(argv[2])
    if not (checkout / "tests").is_dir():
        print(f"error: {checkout}/tests not found; run 'make detectron2' first", file=sys.stderr)
        return 2
    try:
        expected = read_expected(expected_path)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log = checkout / "tests.log"
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        (Path(tmp) / "mgd_seed_each_test.py").write_text(SEED_PLUGIN)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")])))
        # -c setup.cfg: the checkout's own (empty) pytest settings, not this repository's pytest.ini.
        command = [sys.executable, "-m", "pytest", "-c", "setup.cfg", "--rootdir", ".", "-p", "no:cacheprovider",
                   "-p", "mgd_seed_each_test", "-q", "-rfE", "--continue-on-collection-errors", f"--junitxml={junit}", "tests", *argv[3:]]
        start = time.monotonic()
        with open(log, "w") as out:
            status = subprocess.run(command, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - start
        if status not in (0, 1) or not junit.is_file():
            print(f"error: pytest stopped with status {status} before running the tests; see {log}", file=sys.stderr)
            return 1
        seen = outcomes(checkout, junit)
    counts = {o: sum(1 for v in seen.values() if v == o) for o in ("passed", "skipped", "failed")}
    unexpected, now_passing = compare(expected, seen)
    n_expected = sum(1 for t in expected if seen.get(t) == "failed")
    summary = (f"{counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed "
               f"({n_expected} expected, listed in {expected_path}) in {seconds:.0f} s")
    if unexpected or now_passing:
        problems = []
        if unexpected:
            problems.append(f"unexpected failures: {', '.join(unexpected)}")
        if now_passing:
            problems.append(f"listed as expected failures but passed (delete their lines): {', '.join(now_passing)}")
        print(f"error: detectron2's own tests: {summary}; {'; '.join(problems)}; see {log}", file=sys.stderr)
        return 1
    print(f"detectron2's own tests: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
