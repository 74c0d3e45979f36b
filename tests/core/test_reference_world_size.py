"""MGD.REFERENCE_WORLD_SIZE: the distillation strength does not depend on the process count,
and SOLVER.REFERENCE_WORLD_SIZE auto-scaling (through MGDTrainer) keeps the MGD schedule's.

The reference: 8 GPUs x 2 images, each GPU dividing its summed loss by the global batch 16,
DDP averaging the gradients over the 8 GPUs. With the rule sum / (B * R / world_size)
(R = MGD.REFERENCE_WORLD_SIZE), one process with B images and two processes with B / 2 images
each give the same student gradient of the distillation loss (checked with real DDP over gloo).
Each matching is solved from (UPDATE_ITER + 1) x B / R images at any process count
(mgd.matching.plan_matching_pass; tests/core/test_matching_statistic.py).
"""
import os

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from d2_support import TINY_INPUT, config_dir, import_overlay, load_cfg, synthetic_batch  # noqa: E402

from mgd.config import distillation_divisor  # noqa: E402
from mgd.matching import plan_matching_pass  # noqa: E402

BATCH = 4
OPTS = TINY_INPUT + ["SOLVER.IMS_PER_BATCH", str(BATCH), "MGD.IGNORE_INDS", "[2, 3, 4, 5, 6, 7, 8]"]


def test_divisor_rule():
    assert distillation_divisor(16, 8, 8) == 16  # the published run: the global batch
    assert distillation_divisor(16, 8, 1) == 128
    assert distillation_divisor(16, 8, 4) == 32
    assert distillation_divisor(2, 8, 1) == 16  # upstream's auto-scaling to 1 GPU: batch 2
    assert distillation_divisor(16, 0, 1) == distillation_divisor(16, 0, 4) == 16  # the original code
    assert distillation_divisor(16, 4, 1) == 64  # another reference: 4 GPUs x 4 images
    assert distillation_divisor(16, 4, 2) == 32 and distillation_divisor(16, 16, 4) == 64
    with pytest.raises(ValueError):
        distillation_divisor(16, -1, 1)
    with pytest.raises(ValueError):
        distillation_divisor(0, 8, 1)


def _model(tmp_root, reference_world_size=8):
    import_overlay()
    from detectron2.modeling import build_model

    cfg = load_cfg(tmp_root, "demo_mgd_R50_R18.yaml", OPTS + ["MGD.REFERENCE_WORLD_SIZE", str(reference_world_size)])
    torch.manual_seed(0)
    model = build_model(cfg)
    model.eval()
    model.update_margins()
    model.reset_matching()
    model.accumulate_matching(synthetic_batch(BATCH, seed=7))
    model.finish_matching()
    model.train()
    return model


def _distill_loss(model, batch):
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        return model(batch)["loss_distill"]


def _student_grads(model) -> dict:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()
            if p.grad is not None and not k.startswith("t_net.")}


@pytest.mark.parametrize("reference", [8, 4])
def test_single_process_divides_by_the_reference_world_size_times_the_batch(tmp_path, reference):
    model = _model(tmp_path, reference_world_size=reference)
    assert model.loss_divisor == reference * BATCH
    original = _model(tmp_path, reference_world_size=0)
    assert original.loss_divisor == BATCH
    batch = synthetic_batch(BATCH, seed=11)
    new, old = _distill_loss(model, batch), _distill_loss(original, batch)
    per_position = model.distillation_losses(batch)  # each position's loss / its factor, summed over images
    assert old.item() == pytest.approx(sum(v.item() for v in per_position.values()) / BATCH, rel=1e-6)
    assert new.item() == pytest.approx(old.item() / reference, rel=1e-6)


def _rank_main(rank, world_size, init_file, out_dir, tmp_root):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        from torch.nn.parallel import DistributedDataParallel

        model = _model(tmp_root)
        ddp = DistributedDataParallel(model, broadcast_buffers=False, find_unused_parameters=True)
        half = BATCH // world_size
        batch = synthetic_batch(BATCH, seed=11)[rank * half:(rank + 1) * half]
        _distill_loss(ddp, batch).backward()
        torch.save({"divisor": model.loss_divisor, "grads": _student_grads(model)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_with_half_the_images_give_the_single_process_gradient(tmp_path):
    config_dir(tmp_path / "cfg")  # once, before the ranks read it
    mp.spawn(_rank_main, args=(2, str(tmp_path / "rendezvous"), str(tmp_path), str(tmp_path / "cfg")),
             nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["divisor"] for r in ranks] == [8 * BATCH / 2] * 2

    reference = _model(tmp_path / "cfg")
    _distill_loss(reference, synthetic_batch(BATCH, seed=11)).backward()
    expected = _student_grads(reference)
    assert any(k.startswith("s_net.backbone.") for k in expected)
    assert any(k.startswith("distiller.student_norms.") for k in expected)
    for rank in ranks:  # after DDP's all-reduce every rank holds the averaged gradient
        assert set(rank["grads"]) == set(expected)
        for name, grad in expected.items():
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-9, msg=name)



def test_upstream_auto_scaling_also_scales_the_matching_schedule(tmp_path):
    """SOLVER.REFERENCE_WORLD_SIZE 8 on one process: upstream scales the batch 16 -> 2, the lr
    by 1/8 and the iterations by 8; the matching must move with them (reference: 0, 5k, 10k,
    15k, 31k, 62k of 90k) and keep its statistic: the reference's (1000 + 1) x 16 / 8 = 2002
    images (MATCHING_RANKS all), or rank 0's 1001 batches of 2 (rank0)."""
    import_overlay()
    from mgd.schedule import matching_schedule
    from detectron2.engine.mgd_trainer import scale_to_world_size

    cfg = load_cfg(tmp_path, "mgd_retinanet_R50_R18_FPN_1x.yaml", ["SOLVER.REFERENCE_WORLD_SIZE", "8"])
    reference = plan_matching_pass(1000, 16, 8, 8, "all")
    assert (reference.images, reference.batches) == (2002, 126)
    one = scale_to_world_size(cfg, 1)
    assert (one.SOLVER.IMS_PER_BATCH, one.SOLVER.MAX_ITER, one.SOLVER.STEPS) == (2, 720000, (480000, 640000))
    assert one.SOLVER.BASE_LR == pytest.approx(0.01 / 8)
    assert matching_schedule(one.SOLVER.MAX_ITER, one.MGD.UPDATE_FREQ, one.MGD.UPDATE_SLOW_STEP) == [
        0, 40000, 80000, 120000, 248000, 496000]
    assert one.MGD.UPDATE_ITER == 8007  # (8007 + 1) x 2 / 8 = 2002
    scaled = plan_matching_pass(one.MGD.UPDATE_ITER, one.SOLVER.IMS_PER_BATCH, one.MGD.REFERENCE_WORLD_SIZE, 1)
    assert (scaled.images, scaled.batches) == (2002, 1001)
    assert distillation_divisor(one.SOLVER.IMS_PER_BATCH, one.MGD.REFERENCE_WORLD_SIZE, 1) == 16
    rank0 = scale_to_world_size(load_cfg(tmp_path, "mgd_retinanet_R50_R18_FPN_1x.yaml", [
        "SOLVER.REFERENCE_WORLD_SIZE", "8", "MGD.MATCHING_RANKS", "rank0"]), 1)
    assert rank0.MGD.UPDATE_ITER == 1000  # the per-process batch is unchanged: so is the pass
    assert plan_matching_pass(1000, 2, 8, 1, "rank0").images == plan_matching_pass(1000, 16, 8, 8, "rank0").images == 2002
    assert scale_to_world_size(cfg, 8) is cfg  # the reference itself: unchanged
    plain = load_cfg(tmp_path, "mgd_retinanet_R50_R18_FPN_1x.yaml")  # SOLVER.REFERENCE_WORLD_SIZE 0: off
    assert scale_to_world_size(plain, 1) is plain


class _NoDataTrainer:
    """An MGDTrainer whose training data is never read (only its construction is tested)."""

    @staticmethod
    def make(cfg):
        import itertools

        from detectron2.engine.mgd_trainer import MGDTrainer

        class Trainer(MGDTrainer):
            @classmethod
            def build_train_loader(cls, cfg):
                return itertools.repeat(synthetic_batch(cfg.SOLVER.IMS_PER_BATCH))

        return Trainer(cfg)


def test_the_trainer_applies_auto_scaling_to_batch_divisor_and_matching(tmp_path):
    """Through MGDTrainer, on one process: SOLVER.REFERENCE_WORLD_SIZE 8 and MGD.REFERENCE_WORLD_SIZE
    4 (non-default): batch 16 -> 2, divisor 2 x 4 / 1 = 8, matchings every 8x more iterations,
    each from (79 + 1) x 16 / 4 = 320 images as the unscaled config would."""
    import logging

    import_overlay()
    cfg = load_cfg(tmp_path, "demo_mgd_R50_R18.yaml", OPTS + [
        "SOLVER.IMS_PER_BATCH", "16", "SOLVER.REFERENCE_WORLD_SIZE", "8", "MGD.REFERENCE_WORLD_SIZE", "4",
        "OUTPUT_DIR", str(tmp_path / "run"), "DATASETS.TEST", "()"])
    (tmp_path / "run").mkdir()
    unscaled = plan_matching_pass(cfg.MGD.UPDATE_ITER, 16, 4, 1)
    assert (cfg.MGD.UPDATE_ITER, unscaled.images) == (79, 320)
    lines = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("detectron2.mgd")  # Detectron2's loggers may not propagate to root
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        trainer = _NoDataTrainer.make(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = "\n".join(lines)
    assert trainer.cfg.SOLVER.IMS_PER_BATCH == 2 and trainer.cfg.SOLVER.MAX_ITER == 8 * cfg.SOLVER.MAX_ITER
    assert list(trainer.cfg.MGD.UPDATE_FREQ) == [8 * f for f in cfg.MGD.UPDATE_FREQ]
    assert trainer.model.loss_divisor == 2 * 4 / 1
    plan = trainer.matching_hook().plan
    assert (plan.images, plan.batches, plan.rank_batch) == (320, 160, 2)
    assert "IMS_PER_BATCH 2 x MGD.REFERENCE_WORLD_SIZE 4 / 1 processes = 8:" in text
    assert "each matching draws 160 batches per process and is solved from" in text
