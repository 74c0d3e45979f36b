"""The whole chain for a two-stage detector through the make targets a user runs, at tiny size:
``make weights RANDOM_INIT=1``, then with ``DETECTOR=faster_rcnn``: base R50 (the teacher),
merge, distill, convert-all, eval. Each step's output is where the next looks for it, the
distillation trains a Faster R-CNN student (its RPN and ROI losses and loss_distill), and the
converted student evaluates as a Faster R-CNN."""
import json
import os
import subprocess
import sys

import pytest

from d2_support import REPO, make_synthetic_dataset, synthetic_dataset_args

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

TINY = ("MODEL.ROI_HEADS.NUM_CLASSES 4 SOLVER.IMS_PER_BATCH 2 SOLVER.BASE_LR 0.001 SOLVER.WARMUP_ITERS 0 "
        "SOLVER.STEPS \"()\" SOLVER.MAX_ITER 4 SOLVER.CHECKPOINT_PERIOD 100 TEST.EVAL_PERIOD 0 "
        "MODEL.RPN.POST_NMS_TOPK_TRAIN 100 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32 "
        "MODEL.ANCHOR_GENERATOR.SIZES \"[[16],[32],[64],[128],[256]]\"")
MATCHING = "MGD.UPDATE_FREQ \"[2,4]\" MGD.UPDATE_SLOW_STEP \"[2]\" MGD.UPDATE_ITER 1 MGD.IGNORE_INDS \"[3,4,5,6,7,8]\""


def make(*args, timeout=900):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run(["make", "--no-print-directory", *map(str, args), f"PYTHON={sys.executable}"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def test_faster_rcnn_base_merge_distill_convert_eval(tmp_path):
    synth = make_synthetic_dataset(tmp_path / "synth", train=8, val=4)
    datasets = " ".join(str(a) for a in synthetic_dataset_args(synth) if a != "--dataset")
    sets = "DATASETS.TRAIN \"('mgd_synth_train',)\" DATASETS.TEST \"('mgd_synth_val',)\""
    out, weights = tmp_path / "output", tmp_path / "weights"
    common = [f"OUTPUT_DIR={out}", f"WEIGHTS_DIR={weights}", "DETECTOR=faster_rcnn", "RANDOM_INIT=1",
              f"DATASETS={datasets}", "SCALE=data"]
    make("weights", f"WEIGHTS_DIR={weights}", "RANDOM_INIT=1")
    make("base", "DEPTH=50", *common, f"OPTS={sets} {TINY}")
    teacher = out / "base-faster_rcnn-R50" / "model_final.pth"
    assert teacher.is_file()
    merged = make("merge", *common)
    assert "(Faster R-CNN, ResNet-50" in merged and (weights / "T50-S18-faster_rcnn.pkl").is_file()
    make("distill", *common, f"OPTS={sets} {TINY} {MATCHING}")
    run = out / "mgd-faster_rcnn"
    records = [json.loads(line) for line in (run / "metrics.json").read_text().splitlines()]
    losses = {k for r in records for k in r if k.startswith("loss_")}
    assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_distill"} <= losses
    assert any(r.get("loss_distill", 0) > 0 for r in records)
    make("convert-all", *common)
    assert (run / "model_final.pkl").is_file()
    make("eval", *common, f"OPTS={sets} {TINY}")
    results = json.loads((run / "eval" / "eval_results.json").read_text())
    assert "AP" in json.dumps(results)
