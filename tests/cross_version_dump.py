"""Run one MGD model on fixed weights and batches under the Detectron2 on the import path, and
save what it computes (for tests/d2/test_cross_version.py; not a test itself).

    python tests/cross_version_dump.py WEIGHTS.pt OUT.pt [faster_rcnn]

WEIGHTS.pt: the model's state_dict; written (random init, non-trivial norms) when absent, so the
first version run creates the weights the second loads. OUT.pt: a dict of tensors: the taps of
both networks, the margins, the matching's costs and assignments, the per-position distillation
losses, the detection losses, the student's gradients and the inference outputs.
"""
import sys
import tempfile
from pathlib import Path

import torch

from mgd_reference import randomise_norms  # noqa: E402
from d2_support import TINY_INPUT, import_overlay, load_cfg, synthetic_batch  # noqa: E402

#: c2..c5 and p3 (an FPN output: the teacher's FPN runs too); every detection kept at inference
OPTS = TINY_INPUT + ["MGD.IGNORE_INDS", "[5, 6, 7, 8]", "SOLVER.IMS_PER_BATCH", "2",
                     "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0", "MGD.REFERENCE_WORLD_SIZE", "0"]
#: the MGD config and overrides of each detector (the R-CNN's proposals and ROI heads sample
#: at random: its training forward runs from a fixed generator state)
DETECTORS = {
    "retinanet": ("demo_mgd_R50_R18.yaml", OPTS),
    "faster_rcnn": ("demo_mgd_faster_rcnn_R50_R18.yaml",
                    TINY_INPUT + ["MGD.IGNORE_INDS", "[5, 6, 7, 8]", "SOLVER.IMS_PER_BATCH", "2",
                                  "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MGD.REFERENCE_WORLD_SIZE", "0",
                                  "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200"]),
}


CONFIG_BUFFERS = ("pixel_mean", "pixel_std") + tuple(f"anchor_generator.cell_anchors.{i}" for i in range(5))


def build(weights: Path, detector: str = "retinanet"):
    import_overlay()
    from detectron2.modeling import build_model

    config, opts = DETECTORS[detector]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_cfg(Path(tmp), config, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    if weights.exists():
        state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # buffers the pin saves and today's Detectron2 does not (non-persistent: the cell anchors
        # and pixel mean/std, rebuilt from the config)
        assert not [k for k in missing + unexpected if not k.endswith(CONFIG_BUFFERS)], (missing, unexpected)
    else:
        randomise_norms(model.t_net, 1)
        randomise_norms(model.s_net, 2)
        torch.save(model.state_dict(), weights)
    return model


def dump(weights: Path, detector: str = "retinanet") -> dict:
    from detectron2.utils.events import EventStorage

    model = build(weights, detector)
    out = {}
    batch = synthetic_batch(2, seed=0)
    with EventStorage(0):
        model.train()
        for name, net in (("student", model.s_net), ("teacher", model.t_net)):
            with torch.no_grad():
                for key, tap in model._backbone_taps(net, batch).items():
                    out[f"tap/{name}/{key}"] = tap
        model.update_margins()
        out.update({f"margin/{k}": v for k, v in model.distiller.margins().items()})
        model.eval()
        model.reset_matching()
        for seed in (1, 2, 3):
            model.accumulate_matching(synthetic_batch(2, seed=seed))
        out.update({f"cost/{k}": v.clone() for k, v in model.distiller.accumulated_costs().items()})
        model.finish_matching()
        out.update({f"assignment/{k}": v for k, v in model.distiller.assignments().items()})
        model.train()
        out.update({f"position_loss/{k}": v for k, v in model.distillation_losses(batch).items()})
        if detector != "retinanet":
            torch.manual_seed(3)
        losses = model(batch)
        out.update({f"loss/{k}": v.detach() for k, v in losses.items()})
        if hasattr(model.s_net, "loss_normalizer"):  # RetinaNet's
            out["loss_normalizer"] = torch.tensor(float(model.s_net.loss_normalizer))
        model.zero_grad()
        sum(losses.values()).backward()
        out.update({f"grad/{k}": p.grad.clone() for k, p in model.named_parameters()
                    if p.grad is not None and k.startswith(("s_net.backbone.bottom_up.", "distiller."))})
        model.eval()
        with torch.no_grad():
            results = model([{k: v for k, v in x.items() if k != "instances"} for x in batch])
    for i, result in enumerate(results):
        instances = result["instances"]
        order = torch.argsort(instances.scores, descending=True, stable=True)
        out[f"inference/{i}/boxes"] = instances.pred_boxes.tensor[order]
        out[f"inference/{i}/scores"] = instances.scores[order]
        out[f"inference/{i}/classes"] = instances.pred_classes[order]
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[3:] and sys.argv[3] not in DETECTORS:
        sys.exit(f"usage: python tests/cross_version_dump.py WEIGHTS.pt OUT.pt [{'|'.join(DETECTORS)}]")
    torch.set_num_threads(1)  # the same reduction order in both processes
    torch.save(dump(Path(sys.argv[1]), *sys.argv[3:]), sys.argv[2])
