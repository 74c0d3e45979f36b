"""Every script refuses bad input with one ``error:`` line, a non-zero exit and no output.

Each case runs the real command line (``sys.executable scripts/...``) in its own folder. The
cases are started together, a few at a time, by one module fixture (they are independent
processes), and each test then checks its own case: exit code != 0, exactly one stderr line
starting with ``error:`` and mentioning what is wrong, no output file and no temporary file
left in the case's folder, and - for the hostile pickles - no file created by the payload.
No input needs Detectron2; each process takes about the time of `import mgd` (torch).
"""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scripts_support import (
    assert_one_line_error,
    converted_student,
    d2_pickle,
    malicious_checkpoint,
    retinanet_state_dict,
    run_script,
    torchvision_resnet_keys,
    write_pickle,
)

MERGE = "merge-models-into-one.py"
SPLIT = "convert-output-to-d2.py"
ALL = "convert_all.py"
SYNTH = "make_synthetic_coco.py"
RANDW = "make_random_torchvision_weights.py"
MARK = "random_init_marker.py"

# id: (script, argv (relative to the case folder; "@x" = the shared input x), expected text)
CASES = {
    "merge-missing-teacher": (MERGE, ["@nothere.pth", "@r18.pkl", "out.pkl"], "not found"),
    "merge-missing-student": (MERGE, ["@t50.pkl", "@nothere.pkl", "out.pkl"], "not found"),
    "merge-empty-teacher": (MERGE, ["@empty.pth", "@r18.pkl", "out.pkl"], "empty"),
    "merge-truncated-teacher": (MERGE, ["@t50-truncated.pkl", "@r18.pkl", "out.pkl"], "truncated"),
    "merge-truncated-student": (MERGE, ["@t50.pkl", "@r18-truncated.pkl", "out.pkl"], "truncated"),
    "merge-text-teacher": (MERGE, ["@notes.txt", "@r18.pkl", "out.pkl"], "not a checkpoint"),
    "merge-png-student": (MERGE, ["@t50.pkl", "@image.png", "out.pkl"], "PNG"),
    "merge-json-teacher": (MERGE, ["@config.json", "@r18.pkl", "out.pkl"], "not a checkpoint"),
    "merge-list-pickle": (MERGE, ["@list.pkl", "@r18.pkl", "out.pkl"], "not a dict"),
    "merge-strings-not-arrays": (MERGE, ["@strings.pkl", "@r18.pkl", "out.pkl"], "not arrays"),
    "merge-student-is-detector": (MERGE, ["@t50.pkl", "@t18.pkl", "out.pkl"], "whole detector"),
    "merge-student-unconverted": (MERGE, ["@t50.pkl", "@tv18-raw.pkl", "out.pkl"], "unconverted"),
    "merge-teacher-is-backbone": (MERGE, ["@r50.pkl", "@r18.pkl", "out.pkl"], "bare ResNet"),
    "merge-same-file-twice": (MERGE, ["@t50.pkl", "@t50.pkl", "out.pkl"], "TEACHER and STUDENT are the same file"),
    "merge-shallow-teacher": (MERGE, ["@t18.pkl", "@r18.pkl", "out.pkl"], "not deeper than the student"),
    "merge-teacher-is-distilled": (MERGE, ["@distilled.pkl", "@r18.pkl", "out.pkl"], "--eval-teacher"),
    "merge-teacher-wrong-depth": (MERGE, ["@t18.pkl", "@r18.pkl", "out.pkl", "--teacher-depth", "50"],
                                  "ResNet-18"),
    "merge-student-wrong-depth": (MERGE, ["@t50.pkl", "@r50.pkl", "out.pkl", "--student-depth", "18"],
                                  "ResNet-50"),
    "merge-no-head": (MERGE, ["@backbone-only.pkl", "@r18.pkl", "out.pkl"], "does not look like a Detectron2 detector"),
    "merge-outdir-missing": (MERGE, ["@t50.pkl", "@r18.pkl", "no/such/dir/out.pkl"], "does not exist"),
    "merge-outdir-is-file": (MERGE, ["@t50.pkl", "@r18.pkl", "@notes.txt/out.pkl"], "not a folder"),
    "merge-out-is-dir": (MERGE, ["@t50.pkl", "@r18.pkl", "."], "is a folder"),
    "merge-out-is-input": (MERGE, ["@t50.pkl", "@r18.pkl", "@r18.pkl"], "same file"),
    "merge-evil-teacher-system": (MERGE, ["@evil-system.pkl", "@r18.pkl", "out.pkl"], "refusing"),
    "merge-evil-student-open": (MERGE, ["@t50.pkl", "@evil-open.pkl", "out.pkl"], "refusing"),
    "merge-usage": (MERGE, ["@t50.pkl"], "required"),
    "merge-bad-depth-flag": (MERGE, ["@t50.pkl", "@r18.pkl", "out.pkl", "--teacher-depth", "20"],
                             "invalid choice"),
    "split-missing": (SPLIT, ["@nothere.pth", "out.pkl"], "not found"),
    "split-empty": (SPLIT, ["@empty.pth", "out.pkl"], "empty"),
    "split-truncated": (SPLIT, ["@distilled-truncated.pkl", "out.pkl"], "truncated"),
    "split-png": (SPLIT, ["@image.png", "out.pkl"], "PNG"),
    "split-no-snet": (SPLIT, ["@t50.pkl", "out.pkl"], "no student (s_net.*)"),
    "split-no-tnet": (SPLIT, ["@student-only.pkl", "out.pkl", "--eval-teacher"], "no teacher (t_net.*)"),
    "split-outdir-missing": (SPLIT, ["@distilled.pkl", "missing/out.pkl"], "does not exist"),
    "split-outdir-is-file": (SPLIT, ["@distilled.pkl", "@notes.txt/sub/out.pkl"], "not a folder"),
    "split-evil": (SPLIT, ["@evil-system.pkl", "out.pkl"], "refusing"),
    "all-missing-dir": (ALL, ["nothere"], "does not exist"),
    "all-no-pth": (ALL, ["."], "no *.pth"),
    "randw-outdir-missing": (RANDW, ["--depth", "18", "missing/r18.pth"], "does not exist"),
    "randw-bad-depth": (RANDW, ["--depth", "19", "r.pth"], "invalid choice"),
    "mark-missing": (MARK, ["show", "@nothere.pkl"], "not found"),
    "mark-truncated": (MARK, ["mark", "@r18-truncated.pkl"], "truncated"),
    "mark-evil": (MARK, ["mark", "@evil-system.pkl"], "refusing"),
    "mark-not-d2-pickle": (MARK, ["mark", "@tv18-raw.pkl"], "not a Detectron2 pickle"),
    "mark-bad-action": (MARK, ["erase", "@r18.pkl"], "invalid choice"),
    "synth-parent-is-a-file": (SYNTH, ["--out", "@notes.txt/synth", "--train", "2", "--val", "1"],
                               "is a file"),
    "synth-ancestor-is-a-file": (SYNTH, ["--out", "@notes.txt/deeper/synth", "--train", "2", "--val", "1"],
                                 "cannot create"),
    "synth-out-is-file": (SYNTH, ["--out", "@notes.txt", "--train", "2", "--val", "1"], "file"),
    "synth-foreign-folder": (SYNTH, ["--out", "@foreign", "--train", "2", "--val", "1"],
                             "not a set written by this generator"),
    "synth-bad-size": (SYNTH, ["--out", "s", "--size", "8"], "too small"),
}
HOSTILE = {"merge-evil-teacher-system", "merge-evil-student-open", "split-evil", "mark-evil"}


def _make_inputs(d: Path):
    d.mkdir()
    t50, t18 = retinanet_state_dict(50), retinanet_state_dict(18)
    r18, r50 = converted_student(18), converted_student(50)
    write_pickle(d / "t50.pkl", d2_pickle(t50))
    write_pickle(d / "t18.pkl", d2_pickle(t18))
    write_pickle(d / "r18.pkl", r18)
    write_pickle(d / "r50.pkl", r50)
    raw = {k: v for k, v in zip(torchvision_resnet_keys(18), r18["model"].values())}
    write_pickle(d / "tv18-raw.pkl", raw)
    write_pickle(d / "backbone-only.pkl",
                 d2_pickle({k: v for k, v in t50.items() if not k.startswith("head.")}))
    distilled = {"t_net." + k: v for k, v in t50.items()}
    distilled.update({"s_net." + k: v for k, v in t18.items()})
    write_pickle(d / "distilled.pkl", d2_pickle(distilled))
    write_pickle(d / "student-only.pkl",
                 d2_pickle({"s_net." + k: v for k, v in t18.items()}))
    for name in ("t50", "r18", "distilled"):
        data = (d / f"{name}.pkl").read_bytes()
        (d / f"{name}-truncated.pkl").write_bytes(data[: len(data) * 2 // 3])
    (d / "empty.pth").write_bytes(b"")
    (d / "notes.txt").write_text("these are not the weights you are looking for\n")
    (d / "config.json").write_text('{"MODEL": {"WEIGHTS": "r-18.pkl"}}\n')
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    write_pickle(d / "list.pkl", [1, 2, 3])
    write_pickle(d / "strings.pkl", {"model": {"a": "x", "b": "y"}})
    (d / "foreign").mkdir()
    (d / "foreign" / "keep.txt").write_text("someone else's files\n")


def _run_case(root: Path, case_id: str):
    script, argv, _expected = CASES[case_id]
    case_dir = root / "cases" / case_id
    marker = case_dir / "pwned"
    inputs = root / "inputs"
    args = []
    for a in argv:
        if a.startswith("@evil-") and case_id in HOSTILE:
            a = f"@{case_id}.evil"
        args.append(str(inputs / a[1:]) if a.startswith("@") else a)
    before = {p: p.stat().st_mtime_ns for p in inputs.rglob("*")}
    proc = run_script(script, *args, cwd=case_dir)
    after = {p: p.stat().st_mtime_ns for p in inputs.rglob("*")}
    return proc, sorted(os.listdir(case_dir)), marker.exists(), before == after


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    _make_inputs(root / "inputs")
    for cid in CASES:
        (root / "cases" / cid).mkdir(parents=True)
        if cid in HOSTILE:  # a payload that would create the case's marker file
            write_pickle(root / "inputs" / f"{cid}.evil", malicious_checkpoint(
                root / "cases" / cid / "pwned", "open" if "open" in cid else "system"))
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {cid: pool.submit(_run_case, root, cid) for cid in CASES}
        out = {cid: f.result() for cid, f in futures.items()}
    yield out
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_is_refused_cleanly(results, case_id):
    proc, left, payload_ran, inputs_untouched = results[case_id]
    line = assert_one_line_error(proc)
    expected = CASES[case_id][2]
    assert expected in line, line
    assert left == [], f"files left behind: {left}"   # no output, no temporary file
    assert not payload_ran, "the pickle's payload was executed"
    assert inputs_untouched, "an input file was modified"
    assert proc.stdout == ""
