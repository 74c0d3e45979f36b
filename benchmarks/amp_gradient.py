#!/usr/bin/env python
"""How far the student's distillation gradient under mixed precision is from float32's.

RetinaNet R50 teacher, COCO config (c2..c5, the COCO loss factors), one process with
``IMS_PER_BATCH 16``: the distillation divisor is 16 x 8 / 1 = 128, the largest of any GPU
count, so the per-element gradient 2 (s - t) / (factor x divisor) is at its smallest (the
float16 underflow risk at its worst). Two students:

* ``random``: a random-init R18 (the start of a distillation from an untrained student);
* ``close``: an R50 initialised from the teacher with multiplicative noise (``--noise``,
  default 1 %) on every backbone weight, and the distiller's GroupNorm affine fitted by least
  squares so that the normalised student taps approach the teacher's targets (the regime a
  student reaches during training). The script prints how close: |GN(s) - target| / |target|.

For each precision the same batch, weights, margins and matching run once under float32 and
once under ``torch.autocast`` (CPU: float16 or bfloat16); float16 backpropagates
``GradScaler.scale(loss)`` and is unscaled by ``GradScaler.unscale_`` (initial scale 2^16), as
training does. Reported over every trainable student parameter (the student RetinaNet and the
distiller's norms): relative error |g - g32| / |g32|, cosine, and the worst single tensor's
relative error.

    python benchmarks/amp_gradient.py [--size 256] [--images 2] [--precisions float16,bfloat16]
        [--students random,close] [--init-scale 65536]
"""
import argparse
import time
from pathlib import Path
from typing import Dict, Tuple

from mgd.bootstrap import use_detectron2_with_overlay
from mgd.checkpoint import TEACHER_PREFIX

ROOT = Path(__file__).resolve().parents[1]
#: the checkout `make` names (DETECTRON2=pin|latest), its overlay and configs refreshed
CHECKOUT = Path(use_detectron2_with_overlay(str(ROOT)))

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

CONFIG = "mgd_retinanet_R50_R18_FPN_1x.yaml"
PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def build(kind: str, size: int, noise: float = 0.01, seed: int = 0):
    """The MGDRetinaNet of a ``kind`` ("random" | "close") student, at ``size`` px, on CPU."""
    import detectron2.modeling.meta_arch.mgd_retinanet  # noqa: F401 (registers MGDRetinaNet)
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from mgd.config import add_mgd_config

    opts = ["INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size)]
    if kind == "close":  # the teacher's own architecture, norms and frozen stages
        opts += ["MGD.STUDENT.DEPTH", "50", "MGD.STUDENT.RES2_OUT_CHANNELS", "256",
                 "MGD.STUDENT.STAGE_LAST_NORM", "", "MGD.STUDENT.FREEZE_AT", "2"]
    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(str(CHECKOUT / "configs" / "COCO-Detection" / CONFIG))  # _BASE_ resolves there
    cfg.merge_from_list(opts)
    cfg.MODEL.DEVICE = "cpu"
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.MGD.REFERENCE_WORLD_SIZE == 8
    torch.manual_seed(seed)
    model = build_model(cfg)
    if kind == "close":
        g = torch.Generator().manual_seed(seed + 1)
        teacher = model.t_net.backbone.bottom_up.state_dict()
        noisy = {k: v * (1 + noise * torch.randn(v.shape, generator=g)) if k.endswith(("weight", "bias")) else v
                 for k, v in teacher.items()}
        model.s_net.backbone.bottom_up.load_state_dict(noisy)
    return model


def prepare(model, batch, fit_norms: bool) -> Dict[str, float]:
    """Margins and a matching from ``batch`` (float32); with ``fit_norms`` the distiller's norm
    affine fitted to the targets. Returns {position: |GN(s) - target| / |target|}."""
    from mgd.reducers import reduce_teacher

    from detectron2.engine.mgd_matching_pass import run_matching_pass

    model.eval()
    model.update_margins()
    run_matching_pass(model, iter([batch]), 1, label="amp_gradient matching")
    model.train()
    d = model.distiller
    with torch.no_grad():
        s_taps = model._backbone_taps(model.s_net, batch)
        t_taps = model._backbone_taps(model.t_net, batch)
        student, teacher = model._position_list(s_taps), model._position_list(t_taps)
        closeness = {}
        for i in d.distilled_positions:
            name = d.position_names[i]
            target, margin = reduce_teacher(teacher[i], d.margins()[name], d.assignments()[name],
                                            d.student_channels[i], d.reducer)
            target = torch.maximum(target, margin)
            norm = d.student_norms[name]
            if fit_norms:  # per channel: target ~ weight * GroupNorm(s) + bias, least squares
                x = torch.nn.functional.group_norm(student[i], norm.num_groups, eps=norm.eps)
                xm, ym = x.mean((0, 2, 3), keepdim=True), target.mean((0, 2, 3), keepdim=True)
                weight = ((x - xm) * (target - ym)).mean((0, 2, 3)) / (x - xm).pow(2).mean((0, 2, 3))
                norm.weight.copy_(weight)
                norm.bias.copy_(ym.flatten() - weight * xm.flatten())
            closeness[name] = float((norm(student[i]) - target).norm() / target.norm())
    return closeness


def distillation_gradient(model, batch, dtype=None, init_scale: float = 2.0 ** 16) -> Tuple[Dict[str, Tensor], dict]:
    """{student parameter: gradient of loss_distill}, float32 or autocast to ``dtype``.

    float16 goes through an enabled GradScaler (scale, backward, unscale_); the second value
    says what ran: the dtype of a student convolution's output, the scale, whether an inf was found.
    """
    from detectron2.modeling.meta_arch.mgd_detector import autocast
    from detectron2.utils.events import EventStorage

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(TEACHER_PREFIX) for n in params)
    model.zero_grad(set_to_none=True)
    seen = {}
    norm = model.s_net.backbone.bottom_up.res2[0].conv1.norm  # its input: the convolution's output
    handle = norm.register_forward_pre_hook(lambda m, args: seen.setdefault("conv_dtype", args[0].dtype) and None)
    try:
        with EventStorage(0), autocast(model.device, dtype is not None, dtype):
            loss = model(batch)["loss_distill"]
    finally:
        handle.remove()
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, enabled=dtype == torch.float16)
    optimizer = torch.optim.SGD(list(params.values()), lr=0.0)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # divides the gradients by the scale, in float32
    grads = {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    found_inf = sum(int(not torch.isfinite(g).all()) for g in grads.values())
    seen.update(loss=float(loss), scale=scaler.get_scale() if scaler.is_enabled() else None, found_inf=found_inf)
    return grads, seen


def compare(reference: Dict[str, Tensor], grads: Dict[str, Tensor]) -> Dict[str, float]:
    """Relative error, cosine (all parameters as one vector) and the worst tensor's relative error."""
    keys = sorted(reference)
    a = torch.cat([reference[k].flatten().double() for k in keys])
    b = torch.cat([grads.get(k, torch.zeros_like(reference[k])).flatten().double() for k in keys])
    worst = max(float((reference[k].double() - grads.get(k, torch.zeros_like(reference[k])).double()).norm()
                      / reference[k].double().norm()) for k in keys if reference[k].norm() > 0)
    return {"relative_error": float((a - b).norm() / a.norm()), "cosine": float(a @ b / (a.norm() * b.norm())),
            "worst_tensor": worst, "elements": a.numel()}


def measure(kind: str, size: int, images: int, precisions, noise: float = 0.01, init_scale: float = 2.0 ** 16) -> dict:
    """Everything above for one student ``kind``: {"closeness", "float32_loss", precision: figures}."""
    from mgd_tools.training_batch import synthetic_batch

    model = build(kind, size, noise)
    batch = synthetic_batch(images, size=size, seed=3)
    out = {"closeness": prepare(model, batch, fit_norms=kind == "close")}
    reference, seen32 = distillation_gradient(model, batch)
    out["float32_loss"] = seen32["loss"]
    for name in precisions:
        grads, seen = distillation_gradient(model, batch, PRECISIONS[name], init_scale)
        out[name] = {**compare(reference, grads), **seen}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.01, help="relative weight noise of the close student")
    parser.add_argument("--precisions", default="float16,bfloat16")
    parser.add_argument("--students", default="random,close")
    parser.add_argument("--init-scale", type=float, default=2.0 ** 16, help="the float16 GradScaler's scale")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [p for p in args.precisions.split(",") if p]
    print(f"student distillation gradient vs float32: R50 teacher, COCO factors, divisor 128, "
          f"{args.images} x {args.size}x{args.size}, torch {torch.__version__}, CPU autocast")
    print(f"{'student':<8}{'precision':<11}{'rel. error':>11}{'cosine':>10}{'worst tensor':>14}{'loss':>11}"
          f"{'scale':>10}{'inf':>5}")
    for kind in args.students.split(","):
        start = time.perf_counter()
        result = measure(kind, args.size, args.images, precisions, args.noise, args.init_scale)
        if kind == "close":
            print("close student: |GN(s) - target| / |target| = "
                  + ", ".join(f"{k} {v:.3f}" for k, v in result["closeness"].items()))
        print(f"{kind:<8}{'float32':<11}{'':>11}{'':>10}{'':>14}{result['float32_loss']:>11.4g}")
        for name in precisions:
            r = result[name]
            scale = f"{r['scale']:.0f}" if r["scale"] else "-"
            print(f"{'':<8}{name:<11}{r['relative_error']:>11.4f}{r['cosine']:>10.5f}{r['worst_tensor']:>14.4f}"
                  f"{r['loss']:>11.4g}{scale:>10}{r['found_inf']:>5.0f}")
        print(f"({kind}: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
