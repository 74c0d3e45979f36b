#!/usr/bin/env python
"""Train or evaluate RetinaNet, or distil a RetinaNet student from a teacher with MGD.

Examples (configs are used from their copies in detectron2/configs/COCO-Detection/,
made by `make overlay`):

    # MGD: R50 teacher -> R18 student on COCO, 8 GPUs
    python train_net.py --num-gpus 8 \
        --config-file detectron2/configs/COCO-Detection/mgd_retinanet_R50_R18_FPN_1x.yaml \
        MODEL.WEIGHTS weights/T50-S18.pkl OUTPUT_DIR output/mgd
    # a plain RetinaNet (the base step), CPU processes use gloo
    python train_net.py --num-gpus 2 --config-file .../retinanet_torchvision_R_18_FPN_1x.yaml \
        MODEL.WEIGHTS weights/r-18.pkl
    # evaluate the student (or --eval-teacher) of a distillation run
    python train_net.py --eval-only --config-file .../mgd_retinanet_R50_R18_FPN_1x.yaml \
        MODEL.WEIGHTS output/mgd/model_final.pkl
    # the loss-factor probe: each position's loss after its factor and the distillation divisor
    python train_net.py --probe-loss-factors --config-file ... MODEL.WEIGHTS weights/T50-S18.pkl
"""
import importlib.util
import json
import logging
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# Detectron2 not installed: use the checkout in ./detectron2 (without this, the checkout
# folder itself would be found as an empty namespace package "detectron2").
_spec = importlib.util.find_spec("detectron2")
if (_spec is None or _spec.origin is None) and os.path.isdir(os.path.join(ROOT, "detectron2", "detectron2")):
    sys.path.insert(0, os.path.join(ROOT, "detectron2"))

import torch  # noqa: E402

try:
    import detectron2  # noqa: F401,E402
except ImportError:
    sys.exit("error: detectron2 is not importable; run `make detectron2` first")
try:  # the overlay modules register the MGD backbone, meta-architecture and trainer
    import detectron2.modeling.backbone.mgd_resnet  # noqa: F401,E402
    import detectron2.modeling.meta_arch.mgd_retinanet  # noqa: F401,E402
    from detectron2.engine.mgd_launch import launch  # noqa: E402
    from detectron2.engine.mgd_probe import probe_loss_factors  # noqa: E402
    from detectron2.engine.mgd_trainer import MGDCheckpointer, MGDTrainer  # noqa: E402
except ImportError as error:
    sys.exit(f"error: the MGD overlay is missing from detectron2/ ({error}); run `make overlay`")

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402

from mgd.config import add_mgd_config, derive_net_config, is_mgd_config  # noqa: E402

SYNTH_PREFIX = "mgd_synth"
SYNTH_ROOT_ENV = "MGD_SYNTH_ROOT"
DEFAULT_SYNTH_ROOT = os.path.join("datasets", "mgd_synth")


def register_datasets(cfg):
    """Register the synthetic demo set when the config names it (root: $MGD_SYNTH_ROOT)."""
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if not any(n.startswith(SYNTH_PREFIX) for n in names):
        return
    from scripts.synthetic_dataset import register_synthetic_coco

    register_synthetic_coco(os.environ.get(SYNTH_ROOT_ENV, DEFAULT_SYNTH_ROOT))


def setup(args):
    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"  # no GPU here: run on CPU (multi-process runs use gloo)
    if args.eval_teacher and not is_mgd_config(cfg):
        raise SystemExit("error: --eval-teacher needs an MGD config (MODEL.META_ARCHITECTURE MGDRetinaNet)")
    cfg.freeze()
    register_datasets(cfg)
    default_setup(cfg, args)  # logs, and saves the final config to OUTPUT_DIR/config.yaml
    return cfg


def build_eval_model(cfg, eval_teacher=False):
    """The network to evaluate: for an MGD config, the student's (or teacher's) RetinaNet.

    MODEL.WEIGHTS may be a split checkpoint (scripts/convert-output-to-d2.py) or a whole
    distillation checkpoint: its s_net./t_net. prefix is stripped.
    """
    prefix = ""
    if is_mgd_config(cfg):
        role = "teacher" if eval_teacher else "student"
        cfg = derive_net_config(cfg, role)
        prefix = "t_net." if eval_teacher else "s_net."
        logging.getLogger("detectron2").info(f"Evaluating the {role} of the MGD config")
    model = MGDTrainer.build_model(cfg)
    return model, prefix


def save_results(results, path):
    """Write the evaluation results ({dataset task: {metric: value}}) as JSON, atomically."""
    partial = path + ".part"
    with open(partial, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(partial, path)


def main(args):
    cfg = setup(args)
    if args.probe_loss_factors:
        if not is_mgd_config(cfg):
            raise SystemExit("error: --probe-loss-factors needs an MGD config")
        return probe_loss_factors(cfg, target=args.probe_target, iters=args.probe_iters,
                                  matching_batches=args.probe_matching_batches, output=args.probe_output)
    if args.eval_only:
        model, prefix = build_eval_model(cfg, args.eval_teacher)
        MGDCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strip_prefix=prefix).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = MGDTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
            save_results(res, os.path.join(cfg.OUTPUT_DIR, "eval_results.json"))
        return res
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_parser():
    parser = default_argument_parser()
    parser.add_argument("--eval-teacher", action="store_true",
                        help="with --eval-only and an MGD config: evaluate the teacher, not the student")
    parser.add_argument("--probe-loss-factors", action="store_true",
                        help="print each distilled position's loss after its factor and the distillation divisor, "
                             "and factors that would put each at --probe-target; no training")
    parser.add_argument("--probe-target", type=float, default=0.02,
                        help="target per-position loss for the probe's suggestion (default 0.02)")
    parser.add_argument("--probe-iters", type=int, default=1, help="batches the probe averages over")
    parser.add_argument("--probe-matching-batches", type=int, default=20,
                        help="batches of the probe's matching pass (default 20)")
    parser.add_argument("--probe-output", default="", help="also write the suggested override line here")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except Exception as error:  # one line for bad checkpoints, as the scripts do
        if type(error).__name__ == "CheckpointError":
            sys.exit(f"error: {error}")
        raise
