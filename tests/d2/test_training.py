"""A few CPU iterations of MGD training with MGDTrainer on a tiny synthetic set."""
import json

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="Detectron2 not built here (run `make detectron2`)")
# the checkout folder alone is an empty namespace package "detectron2": need the real one
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import (  # noqa: E402
    TINY_INPUT,
    import_overlay,
    load_cfg,
    make_synthetic_dataset,
    register_synthetic_dataset,
)

import_overlay()

from detectron2.engine.mgd_hooks import MGDMatchingHook  # noqa: E402
from detectron2.engine.mgd_trainer import MGDTrainer  # noqa: E402


@pytest.mark.slow
def test_distillation_iterations_train_student_and_leave_teacher_identical(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_64")
    register_synthetic_dataset(root)
    out = tmp_path_factory.mktemp("train")
    cfg = load_cfg(out, "demo_mgd_R50_R18.yaml", TINY_INPUT + [
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
        # each matching: (15 + 1) x 2 / 8 = 4 images, two batches
        "MGD.UPDATE_ITER", "15", "MGD.UPDATE_FREQ", "[2, 4]", "MGD.UPDATE_SLOW_STEP", "[10]",
        "MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]", "OUTPUT_DIR", str(out / "run"),
    ])
    cfg.DATASETS.TEST = ()  # no evaluation here
    (out / "run").mkdir()  # default_setup's job in train_net.py
    torch.manual_seed(0)
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()

    teacher = [k for k in before if k.startswith("t_net.")]
    assert teacher and all(torch.equal(before[k], after[k]) for k in teacher)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("s_net.backbone.bottom_up.") for k in changed)
    assert any(k.startswith("s_net.head.") for k in changed)
    assert any(k.startswith("distiller.student_norms.") for k in changed)
    assert not trainer.model.t_net.training

    hook = trainer.matching_hook()
    assert isinstance(hook, MGDMatchingHook)
    # ahead of the step timer: the matching pass stays out of the `time` scalar; only the step's
    # seeding comes before it (mgd_resume.StepSeedHook)
    timer = next(i for i, h in enumerate(trainer._hooks) if type(h).__name__ == "IterationTimer")
    assert trainer._hooks.index(hook) == 1 < timer and type(trainer._hooks[0]).__name__ == "StepSeedHook"
    assert [r["iteration"] for r in hook.history] == [0, 2]
    assert all(set(r["costs"]) == {"c2", "c3", "c4"} and (r["images"], r["images_per_rank"]) == (4, [4])
               for r in hook.history)
    lines = [json.loads(x) for x in (out / "run" / "mgd_matching.json").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [0, 2]
    metrics = [json.loads(x) for x in (out / "run" / "metrics.json").read_text().splitlines()]
    last = metrics[-1]
    assert last["iteration"] == 2
    for key in ("loss_distill", "loss_cls", "loss_box_reg", "mgd/cost_c2", "mgd/loss_c2", "mgd/matching_iter"):
        assert key in last, key
    assert last["mgd/matching_iter"] == 2
    # total_loss is the sum of the loss entries: per-position scalars are not in it
    latest = {k: h.latest() for k, h in trainer.storage.histories().items()}
    assert latest["total_loss"] == pytest.approx(
        latest["loss_cls"] + latest["loss_box_reg"] + latest["loss_distill"], rel=1e-5)
    assert (out / "run" / "model_final.pth").exists()
