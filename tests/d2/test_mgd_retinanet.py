"""MGDRetinaNet: structure, config derivation, and the one-pass step against the original's way."""
import copy

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="Detectron2 not built here (run `make detectron2`)")
# the checkout folder alone is an empty namespace package "detectron2": need the real one
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from mgd_reference import (  # noqa: E402
    distilled_names, divisor_for_one_process, hooked_taps, naive_position_losses, randomise_norms,
)
from d2_support import import_overlay, load_cfg, synthetic_batch  # noqa: E402

import_overlay()

from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from detectron2.utils.mgd_compat import get_loss_normalizer, set_loss_normalizer  # noqa: E402

from mgd.config import student_config, teacher_config  # noqa: E402

MGD_DEMO = "demo_mgd_R50_R18.yaml"


def _model(tmp_path, opts=()):
    torch.manual_seed(0)
    cfg = load_cfg(tmp_path, MGD_DEMO, opts)
    return cfg, build_model(cfg)


def _random_matching(model, seed=0):
    """Margins from the teacher, and a matching from random features (cheap to solve)."""
    d = model.distiller
    model.update_margins()
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(3, c, 4, 4, generator=g) if i in d.distilled_positions else None
         for i, c in enumerate(d.student_channels)]
    t = [torch.randn(3, c, 4, 4, generator=g) if i in d.distilled_positions else None
         for i, c in enumerate(d.teacher_channels)]
    d.reset_matching()
    d.accumulate_matching(s, t)
    d.finish_matching()


# -- structure and config ----------------------------------------------------------------
def test_config_defaults_and_derivation(tmp_path):
    cfg = load_cfg(tmp_path, "mgd_retinanet_R50_R18_FPN_1x.yaml")
    assert cfg.MGD.REDUCER == "amp" and list(cfg.MGD.IGNORE_INDS) == [4, 5, 6, 7, 8]
    assert cfg.MGD.UPDATE_FREQ == [5000, 31000] and cfg.MGD.UPDATE_SLOW_STEP == [20000]
    assert cfg.MGD.UPDATE_ITER == 1000 and cfg.MGD.PRERELU and not cfg.MGD.SYNC_BN
    assert cfg.MGD.MATCHING_RANKS == "all" and cfg.SOLVER.AMP.PRECISION == "auto"
    assert cfg.MGD.LOSS_FACTORS == pytest.approx([f * 5e7 for f in (1, 1, 0.1, 0.1, 1, 1, 0.01, 0, 0)])
    assert cfg.SOLVER.NESTEROV and cfg.INPUT.FORMAT == "RGB"
    t, s = teacher_config(cfg), student_config(cfg)
    assert (t.MODEL.RESNETS.DEPTH, t.MODEL.RESNETS.RES2_OUT_CHANNELS, t.MODEL.RESNETS.STAGE_LAST_NORM) == (50, 256, "")
    assert (s.MODEL.RESNETS.DEPTH, s.MODEL.RESNETS.RES2_OUT_CHANNELS, s.MODEL.RESNETS.STAGE_LAST_NORM) == (18, 64, "GN")
    assert (t.MODEL.BACKBONE.FREEZE_AT, s.MODEL.BACKBONE.FREEZE_AT) == (2, 1)
    for net in (t, s):
        assert net.MODEL.META_ARCHITECTURE == "RetinaNet"
        assert not net.MODEL.RESNETS.STRIDE_IN_1X1
        assert net.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53]
        assert net.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
    # the full config is untouched by the derivation
    assert cfg.MODEL.META_ARCHITECTURE == "MGDRetinaNet" and cfg.MODEL.RESNETS.STAGE_LAST_NORM == ""
    # overriding one net does not leak into the other
    cfg.MGD.STUDENT.DEPTH = 34
    assert teacher_config(cfg).MODEL.RESNETS.DEPTH == 50 and student_config(cfg).MODEL.RESNETS.DEPTH == 34
    cfg.MGD.SYNC_BN = True  # the original's SyncBN: Detectron2's NaiveSyncBatchNorm (tests/d2/test_sync_bn.py)
    assert student_config(cfg).MODEL.RESNETS.STAGE_LAST_NORM == "naiveSyncBN"
    assert teacher_config(cfg).MODEL.RESNETS.STAGE_LAST_NORM == ""


def test_structure_prefixes_and_frozen_teacher(tmp_path):
    cfg, model = _model(tmp_path, ["MODEL.META_ARCHITECTURE", "MGDRetinaNet"])
    keys = list(model.state_dict())
    assert {k.split(".")[0] for k in keys} == {"t_net", "s_net", "distiller"}
    assert "s_net.backbone.bottom_up.res2.0.conv1.weight" in keys
    assert "t_net.backbone.bottom_up.res5.2.conv3.norm.weight" in keys
    assert all(not p.requires_grad for p in model.t_net.parameters())
    assert all(p.requires_grad for p in model.s_net.parameters())
    model.train()
    assert model.training and model.s_net.training and not model.t_net.training
    assert not any(m.training for m in model.t_net.modules())
    assert model.distiller.student_channels[:4] == (64, 128, 256, 512)
    assert model.distiller.teacher_channels[:4] == (256, 512, 1024, 2048)
    assert model.distiller.distilled_positions == [0, 1, 2, 3]


def test_margins_come_from_the_teacher_prerelu_norms(tmp_path):
    import mgd

    _, model = _model(tmp_path)
    randomise_norms(model.t_net, 3)
    model.update_margins()
    block = model.t_net.backbone.bottom_up.res4[-1]
    expected = mgd.margins_from_affine(block.conv3.norm.weight, block.conv3.norm.bias)
    torch.testing.assert_close(model.distiller.margins()["c4"].flatten(), expected.flatten().float())


def test_zero_factor_on_a_distilled_position_is_refused(tmp_path):
    with pytest.raises(ValueError, match="p5"):
        _model(tmp_path, ["MGD.IGNORE_INDS", "[4, 5, 7, 8]", "MGD.LOSS_FACTORS", "[1., 1., 1., 1., 1., 1., 0., 0., 0.]"])


# -- one forward per network per step ------------------------------------------------------
def _count_calls(modules):
    counts = {name: 0 for name in modules}
    handles = [m.register_forward_hook(lambda *a, name=name: counts.__setitem__(name, counts[name] + 1))
               for name, m in modules.items()]
    return counts, handles


@pytest.mark.parametrize("ignore, teacher_fpn", [("[4, 5, 6, 7, 8]", 0), ("[3, 5, 6, 7, 8]", 1)])
def test_one_forward_per_network_and_no_teacher_head(tmp_path, ignore, teacher_fpn):
    _, model = _model(tmp_path, ["MGD.IGNORE_INDS", ignore])
    _random_matching(model)
    model.train()
    counts, handles = _count_calls({
        "s_bottom_up": model.s_net.backbone.bottom_up, "s_head": model.s_net.head,
        "t_bottom_up": model.t_net.backbone.bottom_up, "t_fpn": model.t_net.backbone,
        "t_head": model.t_net.head,
    })
    with EventStorage():
        losses = model(synthetic_batch(2))
    for h in handles:
        h.remove()
    assert counts == {"s_bottom_up": 1, "s_head": 1, "t_bottom_up": 1, "t_fpn": teacher_fpn, "t_head": 0}
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_distill"}


def _naive_step(model, cfg, batch):
    """The original's double pass, with the reference's own taps, margins, reduction and loss:
    student full forward + its backbone again (hooked); teacher full inference (NMS included,
    result dropped) + its backbone again (hooked). Only the assignments come from the model."""
    names = distilled_names(cfg)
    det = model.s_net(batch)
    s_taps = hooked_taps(model.s_net, model.s_net.preprocess_image(batch).tensor, names)
    with torch.no_grad():
        model.t_net(batch)  # eval-mode inference, dropped
        t_taps = hooked_taps(model.t_net, model.t_net.preprocess_image(batch).tensor, names)
    per = naive_position_losses(model, cfg, s_taps, t_taps, model.distiller.assignments())
    det["loss_distill"] = sum(per.values()) / divisor_for_one_process(cfg)
    return det, per


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reducer, ignore", [("amp", "[4, 5, 6, 7, 8]"), ("sm", "[4, 5, 6, 7, 8]"),
                                             ("amp", "[3, 5, 6, 7, 8]")])
def test_one_pass_equals_the_original_double_pass(tmp_path, reducer, ignore):
    cfg, model = _model(tmp_path, ["MGD.REDUCER", reducer, "MGD.IGNORE_INDS", ignore])
    randomise_norms(model.t_net, 1)
    randomise_norms(model.s_net, 2)
    _random_matching(model)
    model.train()
    batch = synthetic_batch(2, seed=5)
    normalizer = get_loss_normalizer(model.s_net)  # today's RetinaNet creates it at its first step

    with EventStorage() as storage:
        losses = model(copy.deepcopy(batch))
        sum(losses.values()).backward()
        logged = {k: v.latest() for k, v in storage.histories().items() if k.startswith("mgd/loss_")}
    ours = _grads(model)
    model.zero_grad(set_to_none=True)

    set_loss_normalizer(model.s_net, normalizer)
    with EventStorage():
        ref_losses, ref_per = _naive_step(model, cfg, copy.deepcopy(batch))
        sum(ref_losses.values()).backward()
    ref = _grads(model)

    assert set(losses) == set(ref_losses) == {"loss_cls", "loss_box_reg", "loss_distill"}
    for k in losses:
        torch.testing.assert_close(losses[k], ref_losses[k], rtol=1e-5, atol=1e-7)
    assert losses["loss_distill"] > 0
    names = distilled_names(cfg)
    assert set(logged) == {f"mgd/loss_{n}" for n in names} and set(ref_per) == set(names)
    for n in names:
        assert logged[f"mgd/loss_{n}"] == pytest.approx(ref_per[n].item() / divisor_for_one_process(cfg), rel=1e-5)
    assert set(ours) == set(ref) and not any(k.startswith("t_net.") for k in ours)
    assert any(k.startswith("distiller.") for k in ours)
    for k in ref:
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-4, atol=1e-5 * max(scale, 1e-3), msg=k)


def test_matching_pass_runs_backbones_only(tmp_path):
    _, model = _model(tmp_path, ["MGD.IGNORE_INDS", "[1, 2, 3, 4, 5, 6, 7, 8]"])
    model.update_margins()
    model.eval()
    counts, handles = _count_calls({"s_head": model.s_net.head, "t_head": model.t_net.head,
                                    "s_fpn": model.s_net.backbone, "t_fpn": model.t_net.backbone})
    model.reset_matching()
    model.accumulate_matching(synthetic_batch(2))
    model.accumulate_matching(synthetic_batch(2, seed=1))
    for h in handles:
        h.remove()
    assert counts == {"s_head": 0, "t_head": 0, "s_fpn": 0, "t_fpn": 0}
    assert model.distiller.images_seen == 4
    costs = model.finish_matching()
    assert set(costs) == {"c2"} and 0.0 <= costs["c2"] <= 4.0


def _detections(outputs):
    instances = outputs[0]["instances"]
    return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def test_eval_forward_runs_student_or_teacher(tmp_path):
    """Inference gives the student's detections, or the teacher's with ``eval_teacher``: each
    equals the same weights in a RetinaNet built on its own from the derived config. Score
    threshold 0, so every image has detections and the comparisons can fail."""
    cfg, model = _model(tmp_path, ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.0"])
    standalone = {}
    for role, net, derive in (("student", model.s_net, student_config), ("teacher", model.t_net, teacher_config)):
        alone = build_model(derive(cfg))
        alone.load_state_dict(net.state_dict())
        standalone[role] = alone.eval()
    model.eval()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in synthetic_batch(1)]
    with torch.no_grad():
        out_s = _detections(model(batch))
        model.eval_teacher = True
        out_t = _detections(model(batch))
        ref_s = _detections(standalone["student"](batch))
        ref_t = _detections(standalone["teacher"](batch))
    assert len(ref_s[1]) > 0 and len(ref_t[1]) > 0
    for got, ref in ((out_s, ref_s), (out_t, ref_t)):
        assert all(torch.equal(g, r) for g, r in zip(got, ref))
    assert not torch.equal(ref_s[1], ref_t[1])  # the two networks really differ
