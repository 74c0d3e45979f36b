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
    # your own COCO-format sets, named in DATASETS.TRAIN / DATASETS.TEST, at their own image size
    python train_net.py --dataset mine_train train.json images/ --dataset mine_val val.json images/ \
        --scale data --config-file ... DATASETS.TRAIN '("mine_train",)' DATASETS.TEST '("mine_val",)'
    # continue an interrupted run (or --fresh: start over, moving the old run's files aside)
    python train_net.py --resume --config-file ... OUTPUT_DIR output/mgd

The config, the datasets and MODEL.WEIGHTS are checked before anything is logged or written:
a problem is one line `error: ...` and exit code 2. A training into an OUTPUT_DIR that holds
an earlier run needs --resume or --fresh. Ctrl-C saves the last finished iteration and ends
with one line naming the file and the command that resumes.
"""
import argparse
import os
import sys
import warnings

from mgd.runtime import apply_runtime_defaults

apply_runtime_defaults()  # before torch is imported: OMP_WAIT_POLICY, PYTORCH_JIT (mgd/runtime.py)

from mgd.bootstrap import use_detectron2_with_overlay  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
use_detectron2_with_overlay(REPO_ROOT)  # a stale copy of d2/ in the checkout is refreshed first
# the pin's torch.jit.script uses warn on today's torch at every import: noise before any error
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
# the pin's harmless warnings on today's torch/numpy, printed by every data-loading process
warnings.filterwarnings("ignore", message=r"Creating a tensor from a list of numpy.ndarrays", category=UserWarning)
warnings.filterwarnings("ignore", message=r"torch.meshgrid: in an upcoming release", category=UserWarning)

try:
    import detectron2
except ImportError:
    sys.exit("error: detectron2 is not importable; run `make detectron2` first")
try:  # the overlay modules register the MGD backbone, meta-architecture and trainer
    import detectron2.utils.mgd_compat  # noqa: F401
    import detectron2.modeling.backbone.mgd_resnet  # noqa: F401
    import detectron2.modeling.meta_arch.mgd_retinanet  # noqa: F401
    from detectron2.engine.mgd_evaluation import evaluate
    from detectron2.engine.mgd_interrupt_report import checkpoint_state, report_interrupt
    from detectron2.engine.mgd_launch import launch
    from detectron2.engine.mgd_probe import probe_loss_factors
    from detectron2.engine.mgd_setup import check_run, prepare_output_dir, setup_run
    from detectron2.engine.mgd_trainer import MGDTrainer
except ImportError as error:
    sys.exit(f"error: the MGD overlay is missing from detectron2/ ({error}); run `make overlay`")

from detectron2.engine import default_argument_parser  # noqa: E402

from mgd.cli import run_cli  # noqa: E402


def main(args: argparse.Namespace):
    """One process's run (``launch`` starts one per GPU or CPU process): set up, then probe,
    evaluate or train."""
    cfg = setup_run(args, REPO_ROOT)
    if args.probe_loss_factors:
        return probe_loss_factors(cfg, target=args.probe_target, iters=args.probe_iters,
                                  matching_batches=args.probe_matching_batches, output=args.probe_output)
    if args.eval_only:
        return evaluate(cfg, args, code_dir=REPO_ROOT)
    trainer = MGDTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_parser() -> argparse.ArgumentParser:
    """Detectron2's arguments (--config-file, --num-gpus, --resume, --eval-only, ...) and MGD's."""
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
    parser.add_argument("--scale", default="coco",
                        help="input sizes: coco (the config's, default), data (the training images' own "
                             "size) or a shorter side in pixels; the same for training, probe and evaluation")
    parser.add_argument("--fresh", action="store_true",
                        help="train into an OUTPUT_DIR that holds an earlier run: move its files aside to "
                             "OUTPUT_DIR-replaced-<date>/ and start at iteration 0 (else: --resume)")
    return parser


def run(argv=None) -> int:
    """The command line: every check, then the run; a user error ends it with one line
    (``mgd.cli.run_cli``: ``error: ...``, exit code 2), Ctrl-C with the line that says what
    was saved (exit code 130)."""
    args = build_parser().parse_args(argv)
    cfg = before = None
    try:
        cfg = check_run(args)  # errors first: before any log line, output folder or process
        if not prepare_output_dir(cfg, args):
            return 0  # --resume of a finished run: nothing to train, said in one line
        before = checkpoint_state(cfg.OUTPUT_DIR)
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except KeyboardInterrupt:
        report_interrupt(cfg, args, before)
        return 130  # 128 + SIGINT, as a shell reports a Ctrl-C
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(run))
