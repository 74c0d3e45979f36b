"""The README's own-data block runs as written, on a tiny budget: the block is
read from README.md, its sizes, schedule and paths shrunk by the substitutions below (each must
match, so a changed README fails here rather than drifting), offline with RANDOM_INIT=1, and
run with bash from the repository root. Every step then used the data's own size."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable (run `make detectron2`)")

REPO = Path(__file__).resolve().parents[2]


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Your own data, start to finish"):]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def shrunk(block: str, root: Path) -> str:
    substitutions = [
        ("# export RANDOM_INIT=1", "export RANDOM_INIT=1"),  # offline here
        ("make detectron2 && make weights", "make weights"),  # built already
        ("--train 160 --val 60 --size 128", "--train 8 --val 4 --size 64"),
        ("datasets/mine", str(root / "datasets" / "mine")),  # datasets/ does not exist yet, as in a fresh clone
        ("SOLVER.MAX_ITER 300", "SOLVER.MAX_ITER 4"),
        ('SOLVER.STEPS \\"(240,)\\"', 'SOLVER.STEPS \\"(3,)\\"'),
        ("SOLVER.WARMUP_ITERS 50", "SOLVER.WARMUP_ITERS 1"),
        ('MGD.UPDATE_FREQ \\"[100,200]\\"', 'MGD.UPDATE_FREQ \\"[2,4]\\"'),
        ('MGD.UPDATE_SLOW_STEP \\"[200]\\"', 'MGD.UPDATE_SLOW_STEP \\"[2]\\"'),
        ("MGD.UPDATE_ITER 10", "MGD.UPDATE_ITER 2"),
        ("$(cat output/probe/loss_factors.txt)", f"$(cat {root}/output/probe/loss_factors.txt)"),
        ('RUNS="student=output/base-R18 mgd=output/mgd"', f'RUNS="student={root}/output/base-R18 mgd={root}/output/mgd"'),
        ('RUNS="teacher=output/base-R50 student=output/base-R18 mgd=output/mgd"',
         f'RUNS="teacher={root}/output/base-R50 student={root}/output/base-R18 mgd={root}/output/mgd"'),
    ]
    for old, new in substitutions:
        assert old in block, f"the README's own-data block no longer contains {old!r}"
        block = block.replace(old, new)
    return block


def test_the_readme_block_runs_and_every_step_uses_the_data_scale(tmp_path):
    script = shrunk(readme_block(), tmp_path)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANDOM_INIT", "SCALE", "OPTS", "DATASETS", "NUM_GPUS", "MGD_RESUME_COMMAND")}
    env.update(OUTPUT_DIR=str(tmp_path / "output"), WEIGHTS_DIR=str(tmp_path / "weights"), PYTHON=sys.executable,
               OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-5000:]
    out = tmp_path / "output"
    for run in ("base-R50", "base-R18", "probe", "mgd", "mgd/eval"):
        config = (out / run / "config.yaml").read_text()
        assert config.startswith("# train_net.py --scale data"), run
        sizes = yaml.safe_load(config)["INPUT"]
        assert (sizes["MIN_SIZE_TEST"], sizes["MAX_SIZE_TEST"]) == (64, 64), run
    for run in ("base-R50", "base-R18", "mgd"):  # one SEED for every run: the students see the same batches
        assert yaml.safe_load((out / run / "config.yaml").read_text())["SEED"] == 1, run
    for run in ("base-R18", "mgd"):  # the comparison's matched costs, read by make plots
        costs = json.loads((out / run / "matched_cost.json").read_text())["costs"]
        assert set(costs) == {"c2", "c3", "c4", "c5"}
    table = json.loads((out / "plots" / "results.json").read_text())
    assert set(table["matched_cost"]) == {"student", "mgd"}
    assert "MGD - student (one run each: no spread)" in proc.stdout
    assert "_random_init.yaml" in (out / "base-R50" / "log.txt").read_text()
    assert (out / "probe" / "loss_factors.txt").read_text().startswith("MGD.LOSS_FACTORS [")
    results = json.loads((out / "mgd" / "eval" / "eval_results.json").read_text())
    assert results, results
    assert "Traceback" not in proc.stdout
