#!/usr/bin/env python
"""Run the study: does MGD make the student better? (docs/study.md)

    python scripts/run_study.py --protocol configs/study/cpu.yaml --out output/study [--publish docs/study]

What ``make study`` runs: every step of the protocol (mgd_tools/study_runner.py), each kept when
its output exists, so Ctrl-C then the same command continues where it stopped (a training
continues exactly); progress and an ETA after every step; then results.json, tables.md and the
plots in OUT (mgd_tools/study_report.py). ``--publish DIR`` also copies results.json and the
plots there (docs/study/ holds the published CPU protocol's).
"""
import os
import shutil
import sys

from mgd.bootstrap import detectron2_checkout
from mgd.cli import OneLineArgumentParser, run_cli
from mgd.runtime import apply_runtime_defaults

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = OneLineArgumentParser(prog="run_study.py", description=__doc__.splitlines()[0])
    p.add_argument("--protocol", required=True, help="a protocol file (configs/study/*.yaml)")
    p.add_argument("--out", required=True, help="the study's folder")
    p.add_argument("--publish", default="", help="also copy results.json and the plots into this folder")
    args = p.parse_args(argv)
    apply_runtime_defaults()
    from mgd_tools.study_protocol import load_protocol
    from mgd_tools.study_report import write_report
    from mgd_tools.study_runner import StudyInterrupted, StudyRunner

    protocol = load_protocol(args.protocol)
    runner = StudyRunner(protocol, args.out, detectron2_checkout(REPO_ROOT), log=lambda line: print(line, flush=True))
    try:
        runner.run(write_report)
    except (StudyInterrupted, KeyboardInterrupt) as stop:
        print(f"interrupted{f' during {stop}' if str(stop) else ''}: what finished is kept; the same command "
              "continues the study", file=sys.stderr)
        return 130
    if args.publish:
        os.makedirs(os.path.join(args.publish, "plots"), exist_ok=True)
        shutil.copy(runner.path("results.json"), args.publish)
        shutil.copy(runner.path("tables.md"), args.publish)
        for name in os.listdir(runner.path("plots")):
            shutil.copy(runner.path("plots", name), os.path.join(args.publish, "plots"))
        print(f"published results.json, tables.md and the plots into {args.publish}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
