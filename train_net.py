#!/usr/bin/env python
"""Train or evaluate RetinaNet, or distil a RetinaNet student from a teacher with MGD.

Examples:

    # MGD: R50 teacher -> R18 student on COCO, 8 GPUs
    python train_net.py --num-gpus 8 --config-file configs/mgd_retinanet_R50_R18_FPN_1x.yaml \
        MODEL.WEIGHTS weights/T50-S18.pkl OUTPUT_DIR output/mgd
    # a plain RetinaNet (the base step); CPU processes use gloo
    python train_net.py --num-gpus 2 --config-file configs/retinanet_torchvision_R_18_FPN_1x.yaml \
        MODEL.WEIGHTS weights/r-18.pkl
    # evaluate the student (or --eval-teacher) of a distillation run
    python train_net.py --eval-only --config-file configs/mgd_retinanet_R50_R18_FPN_1x.yaml \
        MODEL.WEIGHTS output/mgd/model_final.pkl
    # the loss-factor probe: each position's loss after its factor and the distillation divisor
    python train_net.py --probe-loss-factors --config-file ... MODEL.WEIGHTS weights/T50-S18.pkl
    # your own COCO-format sets, named in DATASETS.TRAIN / DATASETS.TEST
    python train_net.py --dataset mine_train train.json images/ --dataset mine_val val.json images/ \
        --config-file ... DATASETS.TRAIN '("mine_train",)' DATASETS.TEST '("mine_val",)'

The config, the datasets and MODEL.WEIGHTS are checked before anything is logged or written:
a problem is one line `error: ...` and exit code 2.
"""
import logging
import os
import sys
import warnings

from mgd.bootstrap import describe_detectron2, use_detectron2

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
use_detectron2(REPO_ROOT)
# the pin's torch.jit.script uses warn on today's torch at every import: noise before any error
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

try:
    import detectron2
except ImportError:
    sys.exit("error: detectron2 is not importable; run `make detectron2` first")
try:  # the overlay modules register the MGD backbone, meta-architecture and trainer
    import detectron2.utils.mgd_compat  # noqa: F401
    import detectron2.modeling.backbone.mgd_resnet  # noqa: F401
    import detectron2.modeling.meta_arch.mgd_retinanet  # noqa: F401
    from detectron2.data.mgd_datasets import DatasetError, check_datasets, dataset_sizes, register_coco_dataset
    from detectron2.engine.mgd_launch import launch
    from detectron2.engine.mgd_probe import probe_loss_factors
    from detectron2.engine.mgd_results import keep_earlier_evaluation, provenance, report_empty, save_results
    from detectron2.engine.mgd_setup import ConfigError, check_config, check_weights, load_config
    from detectron2.engine.mgd_checkpointer import MGDCheckpointer
    from detectron2.engine.mgd_trainer import MGDTrainer
except ImportError as error:
    sys.exit(f"error: the MGD overlay is missing from detectron2/ ({error}); run `make overlay`")

import torch  # noqa: E402
import detectron2.utils.comm as comm  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402

from mgd.checkpoint import CheckpointError  # noqa: E402
from mgd.config import derive_net_config, is_mgd_config  # noqa: E402

#: the errors that end a run with one line (anything else is a bug: a traceback)
USER_ERRORS = (ConfigError, DatasetError, CheckpointError)


def setup_config(args, parsed=None):
    """The frozen config of this run, with the --dataset sets registered in this process
    (``parsed``: a dict to leave their parsed JSON in, for ``check_datasets``)."""
    progress = (lambda line: print(line, flush=True)) if parsed is not None else None
    for name, json_file, image_root in args.dataset or ():
        register_coco_dataset(name, json_file, image_root, parsed=parsed, progress=progress)
    cfg = load_config(args.config_file, args.opts)
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"  # no GPU here: run on CPU (multi-process runs use gloo)
    if args.probe_loss_factors and "OUTPUT_DIR" not in args.opts[::2]:
        cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "probe")  # its config.yaml and log.txt
    cfg.freeze()
    return cfg


def check_run(args):
    """Every check that can be made before the run starts (raises one of USER_ERRORS); then
    one line per dataset checked, and one warning line per dataset with something Detectron2
    drops or clips."""
    parsed = {}
    cfg = setup_config(args, parsed)
    mode = dict(eval_only=args.eval_only, eval_teacher=args.eval_teacher, probe=args.probe_loss_factors)
    check_config(cfg, **mode)
    # training also evaluates on DATASETS.TEST at its end; the probe reads DATASETS.TRAIN only
    checks = check_datasets(cfg, train=not args.eval_only, test=not args.probe_loss_factors,
                            all_sizes=args.check_all_images, parsed=parsed,
                            progress=lambda line: print(line, flush=True))
    del parsed
    check_weights(cfg, **mode, resume=args.resume)
    for check in checks:
        print(check.summary(), flush=True)
        if check.warnings:
            print(f"warning: dataset {check.name!r}: {'; '.join(check.warnings)}", file=sys.stderr, flush=True)


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
    return MGDTrainer.build_model(cfg), prefix


def evaluate(cfg, args):
    model, prefix = build_eval_model(cfg, args.eval_teacher)
    role = "eval-teacher" if args.eval_teacher else "eval-student"  # strict: no re-init at eval
    checkpointer = MGDCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strip_prefix=prefix, role=role)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    resumed = args.resume and checkpointer.has_checkpoint()  # then OUTPUT_DIR's last checkpoint was loaded
    weights = checkpointer.get_checkpoint_file() if resumed else cfg.MODEL.WEIGHTS
    results = MGDTrainer.test(cfg, model)
    if comm.is_main_process():
        report_empty(results, list(cfg.DATASETS.TEST), cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
        verify_results(cfg, results)
        network = ("teacher" if args.eval_teacher else "student") if prefix else "retinanet"
        about = provenance(weights, args.config_file, args.opts, [dataset_sizes(n) for n in cfg.DATASETS.TEST],
                           code_dir=REPO_ROOT, network=network)
        save_results(results, os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), about)
    return results


def main(args):
    cfg = setup_config(args)
    if args.eval_only and comm.is_main_process():  # nothing of an earlier evaluation is overwritten
        kept = keep_earlier_evaluation(cfg.OUTPUT_DIR, replace=args.replace_eval)
        if kept:
            print(kept, flush=True)
    default_setup(cfg, args)  # logs, and saves the final config to OUTPUT_DIR/config.yaml
    logging.getLogger("detectron2").info(describe_detectron2(REPO_ROOT, os.path.dirname(detectron2.__file__)))
    if args.probe_loss_factors:
        return probe_loss_factors(cfg, target=args.probe_target, iters=args.probe_iters,
                                  matching_batches=args.probe_matching_batches, output=args.probe_output)
    if args.eval_only:
        return evaluate(cfg, args)
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_parser():
    parser = default_argument_parser()
    parser.add_argument("--dataset", nargs=3, action="append", metavar=("NAME", "JSON", "IMAGE_ROOT"),
                        help="register a COCO-format set under NAME (repeatable); name it in "
                             "DATASETS.TRAIN / DATASETS.TEST")
    parser.add_argument("--eval-teacher", action="store_true",
                        help="with --eval-only and an MGD config: evaluate the teacher, not the student")
    parser.add_argument("--probe-loss-factors", action="store_true",
                        help="print each distilled position's loss after its factor and the distillation "
                             "divisor, and factors that would put each at --probe-target; no training")
    parser.add_argument("--probe-target", type=float, default=0.02,
                        help="target per-position loss for the probe's suggestion (default 0.02)")
    parser.add_argument("--probe-iters", type=int, default=1, help="batches the probe averages over")
    parser.add_argument("--probe-matching-batches", type=int, default=20,
                        help="batches of the probe's matching pass (default 20)")
    parser.add_argument("--probe-output", default="", help="also write the suggested override line here")
    parser.add_argument("--replace-eval", action="store_true",
                        help="with --eval-only: delete an earlier evaluation in OUTPUT_DIR instead of moving "
                             "it to OUTPUT_DIR/previous-N")
    parser.add_argument("--check-all-images", action="store_true",
                        help="read every image's size before the run (default: all of a set up to "
                             "5000 images, else 5000 spread over it); file existence is always checked for all")
    return parser


if __name__ == "__main__":
    args = build_parser().parse_args()
    try:
        check_run(args)  # errors first: before any log line, output folder or process
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
