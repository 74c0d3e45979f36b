"""MGDDetector with two-stage detectors (GeneralizedRCNN: Faster and Mask R-CNN): the config
derivation, the refused pairings, and the one-pass step against the original's double pass
written independently (tests/mgd_reference.py: hooked taps, scipy margins, looped reducers)."""
import copy

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from mgd_reference import (  # noqa: E402
    distilled_names, divisor_for_one_process, hooked_taps, naive_position_losses, randomise_norms,
)
from d2_support import import_overlay, load_cfg, synthetic_batch  # noqa: E402

import_overlay()

from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from mgd.config import DETECTORS, student_config, teacher_config  # noqa: E402

FASTER = "demo_mgd_faster_rcnn_R50_R18.yaml"
RCNN_LOSSES = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}


def _model(tmp_path, opts=(), name=FASTER):
    torch.manual_seed(0)
    cfg = load_cfg(tmp_path, name, ["MODEL.RPN.POST_NMS_TOPK_TRAIN", "200", *opts])
    return cfg, build_model(cfg)


def _with_masks(batch):
    """gt_masks for Mask R-CNN: each box filled (BitMasks [k, H, W])."""
    for x in batch:
        inst = x["instances"]
        h, w = inst.image_size
        masks = torch.zeros(len(inst), h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
    return batch


def _random_matching(model, seed=0):
    d = model.distiller
    model.update_margins()
    g = torch.Generator().manual_seed(seed)
    feats = [[torch.randn(3, c, 4, 4, generator=g) if i in d.distilled_positions else None
              for i, c in enumerate(channels)] for channels in (d.student_channels, d.teacher_channels)]
    d.reset_matching()
    d.accumulate_matching(*feats)
    d.finish_matching()


def test_two_stage_derivation_and_the_retinanet_default(tmp_path):
    cfg = load_cfg(tmp_path, "mgd_faster_rcnn_R50_R18_FPN_1x.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "MGDDetector"
    t, s = teacher_config(cfg), student_config(cfg)
    for net, depth, stage_last in ((t, 50, ""), (s, 18, "GN")):
        assert net.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
        assert net.MODEL.BACKBONE.NAME == "build_mgd_resnet_fpn_backbone"
        assert (net.MODEL.RESNETS.DEPTH, net.MODEL.RESNETS.STAGE_LAST_NORM) == (depth, stage_last)
    # a config that does not name the detectors keeps the paper's RetinaNets
    retina = load_cfg(tmp_path, "mgd_retinanet_R50_R18_FPN_1x.yaml")
    for net in (teacher_config(retina), student_config(retina)):
        assert net.MODEL.META_ARCHITECTURE == "RetinaNet"
        assert net.MODEL.BACKBONE.NAME == "build_mgd_retinanet_resnet_fpn_backbone"
    assert set(DETECTORS) == {"RetinaNet", "GeneralizedRCNN"}


@pytest.mark.parametrize("opts, message", [
    (["MODEL.META_ARCHITECTURE", "MGDRetinaNet"], "distils RetinaNets only"),
    (["MGD.TEACHER.META_ARCHITECTURE", "RetinaNet"], "MGD.ALLOW_MIXED_DETECTORS"),
    (["MGD.STUDENT.META_ARCHITECTURE", "SemanticSegmentor"], "not a detector MGD can distil"),
    (["MGD.IGNORE_INDS", "[4, 5, 6, 7]"], "position p7 is distilled"),
])
def test_pairings_it_cannot_distil_are_refused_before_anything_is_built(tmp_path, opts, message):
    with pytest.raises(ValueError, match=message):
        _model(tmp_path, opts)


def test_a_mixed_pair_builds_when_allowed(tmp_path):
    _, model = _model(tmp_path, ["MGD.TEACHER.META_ARCHITECTURE", "RetinaNet", "MGD.ALLOW_MIXED_DETECTORS", "True",
                                 "MODEL.RETINANET.NUM_CLASSES", "4"])
    assert (type(model.t_net).__name__, type(model.s_net).__name__) == ("RetinaNet", "GeneralizedRCNN")


def _naive_step(model, cfg, batch):
    """The original's way: the student's full training forward, then its backbone again with
    hooks; the teacher's full inference (proposals, ROI heads, dropped) and its backbone again.
    Only the assignments come from the model."""
    names = distilled_names(cfg)
    torch.manual_seed(7)  # the ROI heads' and RPN's sampling: the same draws as the model's step
    det = model.s_net(batch)
    s_taps = hooked_taps(model.s_net, model.s_net.preprocess_image(batch).tensor, names)
    with torch.no_grad():
        model.t_net(batch)
        t_taps = hooked_taps(model.t_net, model.t_net.preprocess_image(batch).tensor, names)
    per = naive_position_losses(model, cfg, s_taps, t_taps, model.distiller.assignments())
    det["loss_distill"] = sum(per.values()) / divisor_for_one_process(cfg)
    return det


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mask_on, ignore", [(False, "[4, 5, 6, 7, 8]"), (True, "[0, 4, 6, 7, 8]")])
def test_one_pass_equals_the_original_double_pass(tmp_path, mask_on, ignore):
    cfg, model = _model(tmp_path, ["MODEL.MASK_ON", str(mask_on), "MGD.IGNORE_INDS", ignore])
    randomise_norms(model.t_net, 1)
    randomise_norms(model.s_net, 2)
    _random_matching(model)
    model.train()
    batch = _with_masks(synthetic_batch(2, seed=5))
    calls = {}
    watched = {"t_rpn": model.t_net.proposal_generator, "t_roi": model.t_net.roi_heads,
               "s_rpn": model.s_net.proposal_generator, "s_roi": model.s_net.roi_heads}
    handles = [m.register_forward_hook(lambda *a, k=k: calls.__setitem__(k, calls.get(k, 0) + 1))
               for k, m in watched.items()]
    with EventStorage():
        torch.manual_seed(7)
        losses = model(copy.deepcopy(batch))
        sum(losses.values()).backward()
    for h in handles:
        h.remove()
    ours = _grads(model)
    model.zero_grad(set_to_none=True)
    assert calls == {"s_rpn": 1, "s_roi": 1}  # the teacher's heads never run in a training step
    # ... and nothing of the teacher, its RPN and ROI heads included, can be trained or leave eval mode
    assert not any(p.requires_grad for p in model.t_net.parameters())
    assert not any(m.training for m in model.t_net.modules())
    with EventStorage():
        ref_losses = _naive_step(model, cfg, copy.deepcopy(batch))
        sum(ref_losses.values()).backward()
    ref = _grads(model)

    expected = RCNN_LOSSES | {"loss_distill"} | ({"loss_mask"} if mask_on else set())
    assert set(losses) == set(ref_losses) == expected
    for k in losses:
        torch.testing.assert_close(losses[k], ref_losses[k], rtol=1e-5, atol=1e-7, msg=k)
    assert losses["loss_distill"] > 0
    assert set(ours) == set(ref) and not any(k.startswith("t_net.") for k in ours)
    assert any(k.startswith("s_net.roi_heads.") for k in ours) and any(k.startswith("distiller.") for k in ours)
    for k in ref:
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-4, atol=1e-5 * max(scale, 1e-3), msg=k)


def test_eval_forward_is_the_students_or_the_teachers_faster_rcnn(tmp_path):
    cfg, model = _model(tmp_path, ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    alone = {}
    for role, net, derive in (("student", model.s_net, student_config), ("teacher", model.t_net, teacher_config)):
        alone[role] = build_model(derive(cfg))
        alone[role].load_state_dict(net.state_dict())
        alone[role].eval()
    model.eval()
    batch = [{k: v for k, v in x.items() if k != "instances"} for x in synthetic_batch(1)]
    with torch.no_grad():
        got = {"student": model(batch)[0]["instances"]}
        model.eval_teacher = True
        got["teacher"] = model(batch)[0]["instances"]
        for role in alone:
            ref = alone[role](batch)[0]["instances"]
            assert len(ref) > 0
            assert torch.equal(got[role].pred_boxes.tensor, ref.pred_boxes.tensor)
            assert torch.equal(got[role].scores, ref.scores)


@pytest.mark.parametrize("opts, message", [
    (["MODEL.META_ARCHITECTURE", "MGDRetinaNet"], "distils RetinaNets only"),
    (["MGD.STUDENT.META_ARCHITECTURE", "RetinaNet"], "the teacher is a GeneralizedRCNN and the student a RetinaNet"),
    (["MGD.IGNORE_INDS", "[3, 4, 5, 6]", "MGD.LOSS_FACTORS", "[1, 1, 1, 1, 1, 1, 1, 1, 1]"],
     "add 8 to MGD.IGNORE_INDS"),
])
def test_the_config_check_refuses_them_in_one_line(tmp_path, opts, message):
    from detectron2.engine.mgd_config_checks import check_config
    from detectron2.engine.mgd_config_file import ConfigError

    cfg = load_cfg(tmp_path, FASTER, opts)
    with pytest.raises(ConfigError, match=message) as error:
        check_config(cfg)
    assert "\n" not in str(error.value)
    check_config(load_cfg(tmp_path, FASTER))  # the published pairing passes
