#!/usr/bin/env python
"""The initial weights every arm of one study seed starts from.

    python scripts/study_initial_weights.py --config-file configs/study_mgd_R50_R18.yaml \
        --merged output/study/weights/T50-S18.pkl --seed 3 --out output/study/seed3 [KEY VALUE ...]

Builds the MGD model with torch seeded by ``--seed`` (the student's head and FPN and the
distiller's norms are drawn then), loads the merged checkpoint into it (the teacher, the
student's pretrained backbone; strictly, as a distillation does) and writes OUT/initial_mgd.pth
(the whole model: the MGD arms' MODEL.WEIGHTS) and OUT/initial_plain.pth (its student, the
plain arm's), both atomically. Nothing is drawn again later, so the arms of a seed start from
the same student.
"""
import os
import sys

from mgd.bootstrap import use_detectron2_with_overlay
from mgd.checkpoint import Role, atomic_write, strip_prefix
from mgd.cli import OneLineArgumentParser, run_cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
use_detectron2_with_overlay(REPO_ROOT)


def main(argv=None) -> int:
    p = OneLineArgumentParser(prog="study_initial_weights.py", description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--merged", required=True, help="the merged teacher + student checkpoint")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="folder for initial_mgd.pth and initial_plain.pth")
    p.add_argument("opts", nargs="*", metavar="KEY VALUE")
    args = p.parse_args(argv)
    import torch

    import detectron2.modeling.backbone.mgd_resnet  # noqa: F401  (registers the MGD backbone)
    import detectron2.modeling.meta_arch.mgd_retinanet  # noqa: F401
    from detectron2.engine.mgd_checkpointer import MGDCheckpointer
    from detectron2.engine.mgd_config_file import load_config
    from detectron2.modeling import build_model

    cfg = load_config(args.config_file, list(args.opts))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(args.seed)
    model = build_model(cfg)
    MGDCheckpointer(model, role=Role.MGD_TRAINING).load(args.merged)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    os.makedirs(args.out, exist_ok=True)
    atomic_write(os.path.join(args.out, "initial_mgd.pth"), lambda f: torch.save({"model": state}, f))
    plain = strip_prefix(state, Role.STUDENT.prefix)
    atomic_write(os.path.join(args.out, "initial_plain.pth"), lambda f: torch.save({"model": plain}, f))
    print(f"seed {args.seed}: initial weights -> {args.out}/initial_mgd.pth ({len(state)} tensors), "
          f"initial_plain.pth ({len(plain)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
