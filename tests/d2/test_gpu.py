"""MGD and the pin's ops on CUDA; every test skips with one line where no CUDA device is visible.

* a few MGDTrainer iterations on CUDA, float32 and mixed precision: the forwards autocast to
  float16 (autocast really on, not bfloat16), the GradScaler enabled, updated at every step
  and in the state that says so; a CUDA resume restores the scaler's state;
* margins, matching costs, the assignment, the reduced teacher and the loss: CUDA vs CPU;
* a one-process NCCL launch through the pin's own launcher, with MGD.SYNC_BN, stepping;
* the CUDA NMS / ROIAlign the pin uses (torchvision's) and its own CUDA ops (rotated NMS,
  ROIAlignRotated, rotated IoU) against their CPU results.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from d2_support import (
    CHECKOUT,
    REPO,
    TINY_INPUT,
    import_overlay,
    load_cfg,
    make_synthetic_dataset,
    register_synthetic_dataset,
)

pytestmark = [
    pytest.mark.detectron2,
    pytest.mark.gpu,  # its skips without CUDA are expected (tests/conftest.py)
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)"),
]

TINY_MGD = TINY_INPUT + [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.MAX_ITER", "3",
    "MGD.UPDATE_ITER", "2", "MGD.UPDATE_FREQ", "[2, 4]", "MGD.UPDATE_SLOW_STEP", "[10]",
    "MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]",
]


def _pin_has_cuda_ops():
    from detectron2 import _C

    return _C.get_cuda_version().startswith("CUDA")


def _cuda_trainer(tmp_path_factory, name, *opts):
    import_overlay()
    from detectron2.engine.mgd_trainer import MGDTrainer

    register_synthetic_dataset(make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_64"))
    out = tmp_path_factory.mktemp(name)
    cfg = load_cfg(out, "demo_mgd_R50_R18.yaml", TINY_MGD + ["OUTPUT_DIR", str(out / "run"), *opts])
    cfg.MODEL.DEVICE = "cuda"
    cfg.DATASETS.TEST = ()
    (out / "run").mkdir(exist_ok=True)
    torch.manual_seed(0)
    return MGDTrainer(cfg), out


def _record_autocast(model, seen):
    """Forward pre-hooks: (autocast on?, autocast dtype, dtype of a convolution's output) per forward."""
    def hook(role):
        def record(_module, args):
            seen[role].append((torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"), args[0].dtype))
        return record
    for role, net in (("student", model.s_net), ("teacher", model.t_net)):
        net.backbone.bottom_up.res2[0].conv1.norm.register_forward_pre_hook(hook(role))  # its input: the conv output


@pytest.mark.parametrize("amp", [False, True])
def test_mgd_iterations_on_cuda(tmp_path_factory, amp):
    trainer, out = _cuda_trainer(tmp_path_factory, "cuda_amp" if amp else "cuda_fp32", "SOLVER.AMP.ENABLED", str(amp))
    trainer.resume_or_load(resume=False)
    assert next(trainer.model.parameters()).is_cuda
    seen = {"student": [], "teacher": []}
    _record_autocast(trainer.model, seen)
    updates = []
    update = trainer.grad_scaler.update
    trainer.grad_scaler.update = lambda *a, **k: (updates.append(1), update(*a, **k))[1]
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()

    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("t_net."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("s_net.backbone."))
    assert all(torch.isfinite(v).all() for k, v in after.items() if v.is_floating_point())
    # every forward (3 training steps, 2 matching passes) in float16 under AMP, float32 without
    expected = (True, torch.float16, torch.float16) if amp else (False, None, torch.float32)
    for role, entries in seen.items():
        assert len(entries) >= 3, role
        assert all(entry[0] == expected[0] and entry[2] == expected[2] for entry in entries), (role, entries)
        if amp:
            assert all(entry[1] == torch.float16 for entry in entries), (role, entries)
    assert trainer.grad_scaler.is_enabled() == amp  # float16 on CUDA needs loss scaling
    if amp:
        state = trainer.grad_scaler.state_dict()
        assert len(updates) == 3  # update() after every step
        # no inf: the tracker counts the 3 steps at the initial scale; else the scale was halved
        assert (state["scale"], state["_growth_tracker"]) == (2.0 ** 16, 3) or state["scale"] < 2.0 ** 16, state
    metrics = [json.loads(x) for x in (out / "run" / "metrics.json").read_text().splitlines()]
    assert metrics[-1]["iteration"] == 2
    for key in ("loss_distill", "loss_cls", "loss_box_reg"):
        assert torch.isfinite(torch.tensor(metrics[-1][key])), key
    assert [r["iteration"] for r in trainer.matching_hook().history] == [0, 2]


def test_cuda_resume_restores_the_loss_scaler(tmp_path_factory):
    """float16 on CUDA: a scaler with a distinctive state (scale 1024, growing x2 at every step)
    is saved in the checkpoint and restored by --resume, then keeps growing from there."""
    first, out = _cuda_trainer(tmp_path_factory, "cuda_resume", "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "2")
    first.resume_or_load(resume=False)
    scaler = torch.amp.GradScaler("cuda", init_scale=1024.0, growth_interval=1)
    first.grad_scaler = first.checkpointer.checkpointables["grad_scaler"].scaler = scaler
    first.train()  # two finite steps: 1024 -> 4096
    saved = torch.load(out / "run" / "model_final.pth", weights_only=False, map_location="cpu")
    assert saved["grad_scaler"]["scale"] == 4096.0

    cfg = first.cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = 4
    from detectron2.engine.mgd_trainer import MGDTrainer

    second = MGDTrainer(cfg)
    assert second.grad_scaler.is_enabled() and second.grad_scaler.get_scale() == 2.0 ** 16  # fresh
    second.grad_scaler = second.checkpointer.checkpointables["grad_scaler"].scaler = torch.amp.GradScaler(
        "cuda", init_scale=1.0, growth_interval=1)
    second.resume_or_load(resume=True)
    assert second.start_iter == 2
    assert second.grad_scaler.get_scale() == 4096.0 and second.grad_scaler.state_dict()["_growth_tracker"] == 0
    second.train()
    assert second.grad_scaler.get_scale() == 16384.0


def test_margins_matching_reduction_and_loss_match_cpu():
    from mgd.loss import distillation_loss
    from mgd.margins import margins_from_affine
    from mgd.matching import matching_cost, solve_matching
    from mgd.reducers import reduce_teacher

    g = torch.Generator().manual_seed(0)
    gamma, beta = torch.randn(256, generator=g), torch.randn(256, generator=g)
    torch.testing.assert_close(margins_from_affine(gamma.cuda(), beta.cuda()).cpu(), margins_from_affine(gamma, beta),
                               rtol=1e-6, atol=1e-6)

    student, teacher = torch.randn(2, 64, 12, 12, generator=g), torch.randn(2, 256, 12, 12, generator=g)
    cost_cpu = matching_cost(student, teacher)
    cost_cuda = matching_cost(student.cuda(), teacher.cuda())
    assert cost_cuda.is_cuda
    torch.testing.assert_close(cost_cuda.cpu(), cost_cpu, rtol=1e-4, atol=1e-4)
    for sparse in (False, True):
        on_cuda = solve_matching(cost_cuda, sparse=sparse)
        on_cpu = solve_matching(cost_cpu, sparse=sparse)
        assert on_cuda.is_cuda and on_cuda.shape == on_cpu.shape
        total = lambda a: cost_cpu[torch.arange(len(a)) % 64, a.cpu()].sum()  # noqa: E731
        assert float(total(on_cuda)) == pytest.approx(float(total(on_cpu)), rel=1e-5)  # both optimal

    margin = margins_from_affine(gamma, beta)
    for reducer in ("amp", "sp", "sm"):  # "rd" draws random copies: its stream differs per device
        chosen = solve_matching(cost_cpu, sparse=reducer == "sm")
        t_cpu, m_cpu = reduce_teacher(teacher, margin, chosen, 64, reducer)
        t_cuda, m_cuda = reduce_teacher(teacher.cuda(), margin.cuda(), chosen.cuda(), 64, reducer)
        assert t_cuda.is_cuda
        torch.testing.assert_close(t_cuda.cpu(), t_cpu)
        torch.testing.assert_close(m_cuda.cpu(), m_cpu)
        torch.testing.assert_close(distillation_loss(student.cuda(), t_cuda, m_cuda).cpu(),
                                   distillation_loss(student, t_cpu, m_cpu), rtol=1e-5, atol=1e-3)


NCCL_WORKER = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from torch.nn.parallel import DistributedDataParallel

    from detectron2.engine.launch import _distributed_worker, _find_free_port
    from detectron2.utils import comm
    from detectron2.utils.events import EventStorage


    def train_two_steps(tmp_dir):
        from d2_support import TINY_INPUT, import_overlay, load_cfg, synthetic_batch
        import_overlay()
        from detectron2.modeling import build_model

        assert dist.get_backend() == "nccl" and comm.get_world_size() == 1
        cfg = load_cfg(tmp_dir, "demo_mgd_R50_R18.yaml", TINY_INPUT + ["MGD.SYNC_BN", "True",
                       "MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]"])
        cfg.MODEL.DEVICE = "cuda"
        torch.manual_seed(0)
        model = build_model(cfg)
        from detectron2.modeling.backbone.mgd_norms import MGDNaiveSyncBatchNorm
        sync_bns = [m for m in model.s_net.modules() if isinstance(m, MGDNaiveSyncBatchNorm)]
        assert sync_bns, "MGD.SYNC_BN built no NaiveSyncBatchNorm in the student"
        model.update_margins()  # what MGDMatchingHook does before the first step
        model.eval()
        model.reset_matching()
        model.accumulate_matching(synthetic_batch(2))
        model.finish_matching()
        model.train()
        model = DistributedDataParallel(model, device_ids=[0], find_unused_parameters=True)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        before = [bn.running_mean.clone() for bn in sync_bns]
        with EventStorage():  # the pin's RetinaNet logs into it when training
            for step in range(2):
                losses = model(synthetic_batch(2, seed=step))
                total = sum(losses.values())
                assert torch.isfinite(total), losses
                optimizer.zero_grad()
                total.backward()
                optimizer.step()
        assert any(not torch.equal(b, bn.running_mean) for b, bn in zip(before, sync_bns))
        probe = torch.ones(1, device="cuda")
        dist.all_reduce(probe)
        print("NCCL OK", float(total), int(probe.item()))


    if __name__ == "__main__":
        url = f"tcp://127.0.0.1:{_find_free_port()}"
        mp.spawn(_distributed_worker, nprocs=1, args=(train_two_steps, 1, 1, 0, url, (sys.argv[1],)), daemon=False)
""")


def test_one_process_nccl_launch_steps_with_sync_bn(tmp_path):
    script = tmp_path / "nccl_worker.py"
    script.write_text(NCCL_WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(CHECKOUT), str(REPO), str(REPO / "tests")]))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    done = re.findall(r"^NCCL OK (\S+) (\d+)$", proc.stdout, re.M)
    assert done and done[0][1] == "1", proc.stdout[-4000:]  # all_reduce over the one rank


def test_nms_and_roi_align_on_cuda_match_cpu():
    from detectron2.layers import ROIAlign, batched_nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 8 + torch.rand(300, 2, generator=g) * 60], dim=1)
    scores = torch.randperm(300, generator=g).float() / 300  # distinct: no tie-breaking
    classes = torch.randint(0, 4, (300,), generator=g)
    keep_cpu = batched_nms(boxes, scores, classes, 0.5)
    keep_cuda = batched_nms(boxes.cuda(), scores.cuda(), classes.cuda(), 0.5)
    assert keep_cuda.is_cuda and torch.equal(keep_cuda.cpu(), keep_cpu)

    features = torch.randn(2, 8, 40, 40, generator=g)
    rois = torch.cat([torch.randint(0, 2, (50, 1), generator=g).float(), boxes[:50] / 6], dim=1)
    for aligned in (False, True):
        pool = ROIAlign((7, 7), spatial_scale=1.0, sampling_ratio=2, aligned=aligned)
        # float32 sums in another order: 1.2e-5 apart on one of 19,600 values on an H200
        torch.testing.assert_close(pool(features.cuda(), rois.cuda()).cpu(), pool(features, rois),
                                   rtol=1e-4, atol=1e-4)


def test_the_pins_own_cuda_ops_match_cpu():
    if not _pin_has_cuda_ops():
        pytest.skip("the pinned Detectron2 was built without its CUDA ops (FORCE_CUDA=0?); `make detectron2` adds them")
    from detectron2.layers import ROIAlignRotated, nms_rotated
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    g = torch.Generator().manual_seed(0)
    n = 200
    boxes = torch.cat([torch.rand(n, 2, generator=g) * 200, 8 + torch.rand(n, 2, generator=g) * 60,
                       (torch.rand(n, 1, generator=g) - 0.5) * 180], dim=1)
    scores = torch.randperm(n, generator=g).float() / n
    torch.testing.assert_close(pairwise_iou_rotated(boxes[:60].cuda(), boxes[60:].cuda()).cpu(),
                               pairwise_iou_rotated(boxes[:60], boxes[60:]), rtol=1e-4, atol=1e-4)
    assert torch.equal(nms_rotated(boxes.cuda(), scores.cuda(), 0.5).cpu(), nms_rotated(boxes, scores, 0.5))

    features = torch.randn(2, 8, 40, 40, generator=g, requires_grad=True)
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(), boxes[:40, :2] / 6,
                      boxes[:40, 2:4] / 6, boxes[:40, 4:]], dim=1)
    pool = ROIAlignRotated((7, 7), spatial_scale=1.0, sampling_ratio=2)
    out_cpu = pool(features, rois)
    (grad_cpu,) = torch.autograd.grad(out_cpu.sum(), features)
    features_cuda = features.detach().cuda().requires_grad_()
    out_cuda = pool(features_cuda, rois.cuda())
    (grad_cuda,) = torch.autograd.grad(out_cuda.sum(), features_cuda)
    torch.testing.assert_close(out_cuda.detach().cpu(), out_cpu.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_cuda.cpu(), grad_cpu, rtol=1e-4, atol=1e-4)
