"""The MGD options a study needs: MGD.LOSS_WEIGHT (0: the control), MGD.DISTILL_UNTIL
(distillation for the first part of training only), MGD.GRAD_NORM_PERIOD (the detection and
distillation gradients' norms on the student's ResNet), and their validation."""
import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import import_overlay, load_cfg, synthetic_batch  # noqa: E402

import_overlay()

from detectron2.engine.mgd_config_checks import check_config  # noqa: E402
from detectron2.engine.mgd_config_file import load_config  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from mgd.errors import UserError  # noqa: E402

MGD_DEMO = "demo_mgd_R50_R18.yaml"


@pytest.fixture(autouse=True)
def python_focal_loss(monkeypatch):
    """RetinaNet's focal loss as Python, as in a training process (mgd/runtime.py: PYTORCH_JIT=0):
    the TorchScript one gives other gradients from its second backward pass on, which would
    tell the runs below apart by how often each called it, not by what they compute."""
    import fvcore.nn
    from detectron2.modeling.meta_arch import retinanet

    if hasattr(retinanet, "sigmoid_focal_loss_jit"):
        monkeypatch.setattr(retinanet, "sigmoid_focal_loss_jit", fvcore.nn.sigmoid_focal_loss)


def _model(tmp_path, opts=()):
    torch.manual_seed(0)
    cfg = load_cfg(tmp_path, MGD_DEMO, opts)
    model = build_model(cfg)
    model.train()
    model.update_margins()
    model.reset_matching()
    batch = synthetic_batch(2)
    model.accumulate_matching(batch)
    model.finish_matching()
    return model, batch


def _losses(model, batch, iteration):
    with EventStorage(iteration) as storage:
        losses = model(batch)
        return losses, {k: _value(v) for k, v in storage.latest().items()}


def _value(entry):
    """A storage entry's value: (value, iteration) on newer Detectron2, the value on the pin."""
    return entry[0] if isinstance(entry, tuple) else entry


def _student_grads(model, loss):
    """{name: .grad after ``loss.backward()``} of the student's trainable ResNet parameters (0 if none)."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for n, p in model.s_net.backbone.bottom_up.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("until, iteration, trained", [(0, 50, True), (10, 9, True), (10, 10, False), (10, 11, False)])
def test_distill_until_stops_the_distillation_gradient_from_that_iteration(tmp_path, until, iteration, trained):
    model, batch = _model(tmp_path, ["MGD.DISTILL_UNTIL", str(until)])
    losses, logged = _losses(model, batch, iteration)
    assert losses["loss_distill"].requires_grad == trained
    if trained:
        assert losses["loss_distill"].item() > 0 and "mgd/loss_distill_untrained" not in logged
    else:  # computed and logged, a constant 0 in the sum
        assert losses["loss_distill"].item() == 0 and logged["mgd/loss_distill_untrained"] > 0


def test_loss_weight_scales_the_distillation_gradient(tmp_path):
    (model, batch), (weighted, _) = _model(tmp_path), _model(tmp_path, ["MGD.LOSS_WEIGHT", "0.25"])
    plain = _student_grads(model, _losses(model, batch, 1)[0]["loss_distill"])
    quarter = _student_grads(weighted, _losses(weighted, batch, 1)[0]["loss_distill"])
    assert plain.keys() == quarter.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(quarter[name], 0.25 * grad, rtol=1e-5, atol=1e-12)


def test_gradient_norms_are_those_of_separate_backward_passes_and_change_nothing(tmp_path):
    model, batch = _model(tmp_path, ["MGD.GRAD_NORM_PERIOD", "5"])
    reference, _ = _model(tmp_path)  # the same weights, no logging
    losses, logged = _losses(model, batch, 9)  # the period's last iteration, which the writers log
    assert {"mgd/grad_norm_detection", "mgd/grad_norm_distill", "mgd/grad_cosine"} <= set(logged)
    # the reference: each loss's own backward pass, its .grad read
    ref_losses, ref_logged = _losses(reference, batch, 9)
    assert "mgd/grad_norm_detection" not in ref_logged
    detection = _student_grads(reference, ref_losses["loss_cls"] + ref_losses["loss_box_reg"])
    ref_losses, _ = _losses(reference, batch, 10)
    distill = _student_grads(reference, ref_losses["loss_distill"])
    flat = {k: torch.cat([g[n].reshape(-1) for n in sorted(g)]) for k, g in (("detection", detection),
                                                                              ("distill", distill))}
    # (to 1e-3: a backward pass restricted to the ResNet's parameters, as autograd.grad runs it,
    # lets the CPU's convolution kernels round otherwise than a full .backward(); measured 1e-4)
    assert logged["mgd/grad_norm_detection"] == pytest.approx(flat["detection"].norm().item(), rel=1e-3)
    assert logged["mgd/grad_norm_distill"] == pytest.approx(flat["distill"].norm().item(), rel=1e-3)
    cosine = torch.nn.functional.cosine_similarity(flat["detection"], flat["distill"], dim=0).item()
    assert logged["mgd/grad_cosine"] == pytest.approx(cosine, abs=1e-3)
    # the step's own gradients are those of a run without the logging (up to that rounding)
    total = _student_grads(model, sum(losses.values()))
    fresh, _ = _model(tmp_path)
    fresh_losses, _ = _losses(fresh, batch, 10)
    fresh_total = _student_grads(fresh, sum(fresh_losses.values()))
    for name, grad in fresh_total.items():
        torch.testing.assert_close(total[name], grad, rtol=1e-3, atol=1e-6)
    # not on other iterations
    assert "mgd/grad_norm_detection" not in _losses(model, batch, 10)[1]


@pytest.mark.parametrize("key, value", [("MGD.DISTILL_UNTIL", "-1"), ("MGD.GRAD_NORM_PERIOD", "-5"),
                                        ("MGD.LOSS_WEIGHT", "-0.5"), ("MGD.ASSIGNMENT", "'greedy'"),
                                        ("MGD.MATCHING_DATA", "'val'")])
def test_bad_values_are_one_line_errors(tmp_path, key, value):
    from d2_support import config_dir

    cfg = load_config(str(config_dir(tmp_path) / MGD_DEMO), [key, value])
    with pytest.raises(UserError) as error:
        check_config(cfg)
    assert key in str(error.value) and "\n" not in str(error.value)


def test_the_written_gradient_norms_are_each_periods_own_not_a_median_over_periods(tmp_path):
    """Detectron2's writers log a scalar's median over its last 20 values unless told not to;
    logged once per period, that median would run over up to 20 periods (400 iterations at 20)."""
    model, batch = _model(tmp_path, ["MGD.GRAD_NORM_PERIOD", "5"])
    per_period = []
    with EventStorage(4) as storage:
        for iteration in (4, 9, 14):
            storage._iter = iteration  # EventStorage.iter has no setter on every version
            model(batch)
            per_period.append({k: _value(v) for k, v in storage.latest().items() if k.startswith("mgd/grad_")})
            written = storage.latest_with_smoothing_hint(20)  # what JSONWriter writes for this iteration
            for key, value in per_period[-1].items():
                assert _value(written[key]) == value, key
            with torch.no_grad():  # another step: other gradients in the next period
                for p in model.s_net.backbone.bottom_up.parameters():
                    if p.requires_grad:
                        p.mul_(1.5)
    assert len({p["mgd/grad_norm_detection"] for p in per_period}) == 3  # the periods did differ
