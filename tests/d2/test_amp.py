"""Mixed precision (SOLVER.AMP.ENABLED) on CPU: bfloat16 autocast in both networks' forwards,
the distillation loss in float32, losses close to float32 training, loss-scaler state on resume;
SOLVER.AMP.PRECISION float16 trains with an enabled GradScaler, which skips a step whose
gradients are not finite and lowers its scale (the float16 numerics: tests/d2/test_amp_float16.py)."""
import itertools

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import import_overlay, load_cfg, synthetic_batch  # noqa: E402

import_overlay()

from detectron2.engine.mgd_trainer import MGDTrainer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.engine.train_loop import HookBase  # noqa: E402
from detectron2.modeling.meta_arch.mgd_detector import amp_dtype, autocast  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

# 96 px, not the tests' usual 64: at 64 px FPN's p7 conv sees a 1x1 p6, a shape for which
# oneDNN's bfloat16 weight gradient on CPU (torch 2.14.1) is intermittently non-finite (README).
AMP_INPUT = [
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
]
# c2..c4 (c5's 512 x 2048 solve is slow on CPU), matching at 0 and 2
TINY_MGD = AMP_INPUT + [
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.BASE_LR", "0.01",
    "MGD.UPDATE_ITER", "1", "MGD.UPDATE_FREQ", "[2, 4]", "MGD.UPDATE_SLOW_STEP", "[10]",
    "MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]", "DATASETS.TEST", "()",
]


class FixedBatchTrainer(MGDTrainer):
    """MGDTrainer whose training data is the same two synthetic images at every step."""

    @classmethod
    def build_train_loader(cls, cfg):
        return itertools.repeat(synthetic_batch(2, size=96, seed=3))


def _cfg(tmp_path, *opts):
    cfg = load_cfg(tmp_path, "demo_mgd_R50_R18.yaml", TINY_MGD + ["OUTPUT_DIR", str(tmp_path / "run"), *opts])
    (tmp_path / "run").mkdir(exist_ok=True)
    return cfg


def test_autocast_is_bfloat16_on_cpu_and_off_when_disabled():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with autocast(torch.device("cpu"), True):
        assert conv(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), False):
        assert conv(x).dtype == torch.float32
    with autocast(torch.device("cpu"), True, torch.float16):
        assert conv(x).dtype == torch.float16


def test_precision_setting_chooses_the_dtype_and_the_loss_scaling(tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (amp_dtype("auto", cpu), amp_dtype("auto", cuda)) == (torch.bfloat16, torch.float16)
    assert amp_dtype("float16", cpu) == amp_dtype("float16", cuda) == torch.float16
    assert amp_dtype("bfloat16", cuda) == torch.bfloat16
    with pytest.raises(ValueError, match="PRECISION"):
        amp_dtype("fp16", cpu)
    for precision, dtype, scaling in (("auto", torch.bfloat16, False), ("float16", torch.float16, True),
                                      ("bfloat16", torch.bfloat16, False)):
        trainer = FixedBatchTrainer(_cfg(tmp_path, "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", precision))
        assert (trainer.amp_dtype, trainer.model.amp_dtype) == (dtype, dtype)
        assert trainer.grad_scaler.is_enabled() is scaling  # float16 always trains with loss scaling
    off = FixedBatchTrainer(_cfg(tmp_path, "SOLVER.AMP.PRECISION", "float16"))  # AMP off: no scaler
    assert not off.grad_scaler.is_enabled()


@pytest.mark.slow
def test_amp_iterations_autocast_both_networks_and_keep_the_loss_in_float32(tmp_path):
    torch.manual_seed(0)
    trainer = FixedBatchTrainer(_cfg(tmp_path, "SOLVER.MAX_ITER", "2", "SOLVER.AMP.ENABLED", "True"))
    trainer.resume_or_load(resume=False)
    model = trainer.model
    seen = {"teacher": [], "student": [], "distiller": []}

    def record(role):
        def hook(_module, _inputs):
            seen[role].append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return hook

    def distiller_inputs(_module, args):
        feats = [f for f in args[0] + args[1] if f is not None]
        seen["distiller"].append((torch.is_autocast_enabled("cpu"), {f.dtype for f in feats}))

    model.t_net.backbone.bottom_up.register_forward_pre_hook(record("teacher"))
    model.s_net.backbone.bottom_up.register_forward_pre_hook(record("student"))
    model.distiller.register_forward_pre_hook(distiller_inputs)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.train()

    # two training forwards each (plus the matching passes', also autocast), all in bfloat16
    assert len(seen["student"]) >= 2 and len(seen["teacher"]) >= 2
    assert all(entry == (True, torch.bfloat16) for entry in seen["student"] + seen["teacher"]), seen
    # the distiller (norms, reduction, loss) ran outside autocast, on float32 taps
    assert seen["distiller"] == [(False, {torch.float32})] * 2
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("t_net."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("s_net.backbone."))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast of the weights
    assert trainer.checkpointer.checkpointables["grad_scaler"].scaler.is_enabled() is False  # bf16: no scaling


@pytest.mark.slow
def test_amp_per_position_losses_stay_close_to_float32(tmp_path):
    """Same weights, margins, matching and batch: bfloat16 autocast vs float32 forwards.

    Tolerance: 5 % relative per position (bfloat16 keeps 8 bits of mantissa, ~0.4 % per
    rounding; through R50's 16 blocks the taps differ by ~1-2 %, the squared errors more).
    """
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = synthetic_batch(2, size=96, seed=5)
    model.eval()
    model.update_margins()
    model.reset_matching()
    model.accumulate_matching(batch)
    model.finish_matching()
    model.train()

    def losses(enabled):
        with EventStorage(0) as storage, autocast(torch.device("cpu"), enabled):
            out = model(batch)
        per = {k: v.latest() for k, v in storage.histories().items() if k.startswith("mgd/loss_")}
        return out, per

    out32, per32 = losses(False)
    out16, per16 = losses(True)
    assert out32["loss_distill"].dtype == out16["loss_distill"].dtype == torch.float32
    assert set(per32) == set(per16) == {"mgd/loss_c2", "mgd/loss_c3", "mgd/loss_c4"}
    for name in per32:
        assert per16[name] == pytest.approx(per32[name], rel=0.05), name
        assert per16[name] != per32[name]  # the forwards really ran in another precision
    assert out16["loss_distill"].item() == pytest.approx(out32["loss_distill"].item(), rel=0.05)


@pytest.mark.slow
@pytest.mark.latest_pass
def test_amp_resume_restores_the_loss_scaler_state(tmp_path):
    """The scaler's state goes into checkpoints and comes back on --resume.

    On CPU, bfloat16 needs no loss scaling, so the scaler is enabled by hand here (torch's
    GradScaler supports CPU) with a distinctive scale, as float16 training on CUDA would have.
    """
    torch.manual_seed(0)
    cfg = _cfg(tmp_path, "SOLVER.MAX_ITER", "2", "SOLVER.AMP.ENABLED", "True")
    first = FixedBatchTrainer(cfg)
    first.resume_or_load(resume=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    first.grad_scaler = first.checkpointer.checkpointables["grad_scaler"].scaler = scaler
    first.train()  # two steps, each finite: the scale grows to 4096
    saved = torch.load(tmp_path / "run" / "model_final.pth", weights_only=False)
    assert saved["grad_scaler"]["scale"] == 4096.0
    assert saved["iteration"] == 1

    cfg4 = _cfg(tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.AMP.ENABLED", "True")
    second = FixedBatchTrainer(cfg4)
    second.grad_scaler = second.checkpointer.checkpointables["grad_scaler"].scaler = torch.amp.GradScaler(
        "cpu", init_scale=1.0, growth_interval=1)
    second.resume_or_load(resume=True)
    assert second.start_iter == 2
    assert second.grad_scaler.get_scale() == 4096.0
    second.train()
    assert second.grad_scaler.get_scale() == 16384.0


class _Snapshots(HookBase):
    """After every step: the student's trainable parameters, the scaler's state, the optimizer's."""

    def __init__(self):
        self.taken = []

    def take(self):
        params = {n: p.detach().clone() for n, p in self.trainer.model.named_parameters() if p.requires_grad}
        self.taken.append((params, self.trainer.grad_scaler.state_dict(), len(self.trainer.optimizer.state)))

    def after_step(self):
        self.take()


@pytest.mark.slow
@pytest.mark.latest_pass
def test_float16_step_skips_an_inf_gradient_and_lowers_the_scale(tmp_path):
    """Through MGDTrainer.run_step, float16 on CPU: step 0's gradient of one student weight is
    made inf: no parameter moves, no optimizer state is created, the scale halves (2^16 -> 2^15)
    and the growth tracker restarts; step 1 (finite) moves the parameters at that scale."""
    torch.manual_seed(0)
    trainer = FixedBatchTrainer(_cfg(tmp_path, "SOLVER.MAX_ITER", "2", "SOLVER.AMP.ENABLED", "True",
                                     "SOLVER.AMP.PRECISION", "float16"))
    trainer.resume_or_load(resume=False)
    assert trainer.grad_scaler.is_enabled() and trainer.grad_scaler.get_scale() == 2.0 ** 16
    calls = []

    def poison(grad):
        calls.append(1)
        return torch.full_like(grad, float("inf")) if len(calls) == 1 else grad

    trainer.model.s_net.backbone.bottom_up.res3[0].conv1.weight.register_hook(poison)
    snapshots = _Snapshots()
    trainer.register_hooks([snapshots])
    snapshots.take()  # before training
    trainer.train()

    (before, scaler0, _), (after_inf, scaler1, state1), (after_ok, scaler2, state2) = snapshots.taken
    assert len(calls) == 2
    assert all(torch.equal(before[k], after_inf[k]) for k in before)  # the inf step was skipped
    assert state1 == 0  # the optimizer's step never ran
    assert (scaler0["scale"], scaler1["scale"], scaler1["_growth_tracker"]) == (2.0 ** 16, 2.0 ** 15, 0)
    moved = [k for k in before if not torch.equal(after_inf[k], after_ok[k])]
    assert any(k.startswith("s_net.backbone.") for k in moved) and all(torch.isfinite(after_ok[k]).all() for k in moved)
    assert (scaler2["scale"], scaler2["_growth_tracker"], state2 > 0) == (2.0 ** 15, 1, True)
