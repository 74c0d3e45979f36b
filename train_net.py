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
import logging
import os
import shlex
import sys
import warnings

from mgd.runtime import apply_runtime_defaults

apply_runtime_defaults()  # before torch is imported: OMP_WAIT_POLICY, PYTORCH_JIT (mgd/runtime.py)

from mgd.bootstrap import describe_detectron2, use_detectron2_with_overlay

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
    from detectron2.data.mgd_datasets import check_datasets, dataset_sizes, register_coco_dataset
    from detectron2.engine.mgd_launch import launch
    from detectron2.engine.mgd_probe import probe_loss_factors
    from detectron2.engine.mgd_results import keep_earlier_evaluation, provenance, report_empty, save_results
    from detectron2.engine.mgd_scale import apply_scale, parse_scale
    from detectron2.engine.mgd_setup import (ConfigError, check_config, check_output_dir, check_weights,
                                             checkpoint_iteration, clamp_workers, finished_run, forget_logs_after,
                                             load_config, move_previous_run)
    from detectron2.engine.mgd_checkpointer import MGDCheckpointer
    from detectron2.engine.mgd_console import quiet_console
    from detectron2.engine.mgd_trainer import MGDTrainer, scale_to_world_size
except ImportError as error:
    sys.exit(f"error: the MGD overlay is missing from detectron2/ ({error}); run `make overlay`")

import torch  # noqa: E402
import detectron2.utils.comm as comm  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402

from mgd.checkpoint import Role  # noqa: E402
from mgd.cli import run_cli  # noqa: E402
from mgd.config import derive_net_config, is_mgd_config  # noqa: E402

#: set by the make targets: the command that resumes this run (make ... RESUME=1)
RESUME_COMMAND_VARIABLE = "MGD_RESUME_COMMAND"


def is_training(args) -> bool:
    return not (args.eval_only or args.probe_loss_factors)


def check_overrides(opts):
    """Flags among the KEY VALUE overrides (argparse puts everything after the first override
    there; make's OPTS lands there too) are a mistake to name, not an odd number of words. The
    one home of this rule: the make targets pass OPTS through unchecked."""
    flags = [str(word) for word in opts if str(word).startswith("--")]
    if not flags:
        return
    make_names = {"--resume": "RESUME=1", "--fresh": "FRESH=1", "--scale": "SCALE=..."}
    with_make = [f"{make_names[f]} for {f}" for f in flags if f in make_names]
    others = [f for f in flags if f not in make_names]
    if others:
        with_make.append(f"LAUNCH_ARGS=\"{' '.join(others)}\" for {', '.join(others)}")
    raise ConfigError(f"{' '.join(flags)} among the KEY VALUE config overrides, where flags are not read: put them "
                      f"before the overrides (train_net.py {flags[0]} --config-file FILE KEY VALUE ...); with make, "
                      f"OPTS takes overrides only: {'; '.join(with_make)}")


def setup_config(args, parsed=None):
    """The frozen config of this run (the file, the overrides, ``--scale``'s sizes, workers
    clamped to the cores), with the --dataset sets registered in this process (``parsed``: a
    dict to leave their parsed JSON in, for ``check_datasets``), and the lines that say what
    was adjusted (logged once the log is set up)."""
    check_overrides(args.opts)
    args.scale = parse_scale(args.scale)
    progress = (lambda line: print(line, flush=True)) if parsed is not None else None
    for name, json_file, image_root in args.dataset or ():
        register_coco_dataset(name, json_file, image_root, parsed=parsed, progress=progress)
    cfg = load_config(args.config_file, args.opts)
    notes = [apply_scale(cfg, args.scale, explicit=[str(k) for k in args.opts[0::2]]),
             clamp_workers(cfg, args.num_gpus)]
    if not torch.cuda.is_available() and cfg.MODEL.DEVICE.startswith("cuda"):
        cfg.MODEL.DEVICE = "cpu"  # no GPU here: run on CPU (multi-process runs use gloo)
    if args.probe_loss_factors and "OUTPUT_DIR" not in args.opts[::2]:
        cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "probe")  # its config.yaml and log.txt
    cfg.freeze()
    return cfg, [note for note in notes if note]


def resume_command(args) -> str:
    """The command that continues this run: the make target's (RESUME=1), else this one with --resume."""
    made = os.environ.get(RESUME_COMMAND_VARIABLE)
    if made:
        return made
    argv = [word for word in sys.argv[1:] if word not in ("--resume", "--fresh")]
    return shlex.join(["python", sys.argv[0], "--resume", *argv])


def check_run(args):
    """Every check that can be made before the run starts (raises a mgd.errors.UserError); then
    one line per dataset checked, and one warning line per dataset with something Detectron2
    drops or clips. Returns the config."""
    parsed = {}
    cfg, _ = setup_config(args, parsed)
    mode = dict(eval_only=args.eval_only, eval_teacher=args.eval_teacher, probe=args.probe_loss_factors)
    check_config(cfg, **mode)
    # training also evaluates on DATASETS.TEST at its end; the probe reads DATASETS.TRAIN only
    checks = check_datasets(cfg, train=not args.eval_only, test=not args.probe_loss_factors,
                            all_sizes=args.check_all_images, parsed=parsed,
                            progress=lambda line: print(line, flush=True))
    del parsed
    check_weights(cfg, **mode, resume=args.resume)
    if is_training(args):
        check_output_dir(cfg, args.resume, args.fresh, via_make=bool(os.environ.get(RESUME_COMMAND_VARIABLE)))
    for check in checks:
        print(check.summary(), flush=True)
        if check.warnings:
            print(f"warning: dataset {check.name!r}: {'; '.join(check.warnings)}", file=sys.stderr, flush=True)
    return cfg


def build_eval_model(cfg, eval_teacher=False):
    """The network to evaluate: for an MGD config, the student's (or teacher's) RetinaNet.

    MODEL.WEIGHTS may be a split checkpoint (scripts/convert-output-to-d2.py) or a whole
    distillation checkpoint: its s_net./t_net. prefix (Role.prefix) is stripped. Returns (model, role).
    """
    role = Role.of_run(mgd=is_mgd_config(cfg), eval_only=True, eval_teacher=eval_teacher)
    if role.mgd:
        cfg = derive_net_config(cfg, role.value)
        logging.getLogger("detectron2").info(f"Evaluating the {role.value} of the MGD config")
    return MGDTrainer.build_model(cfg), role


def training_sizes_differ(cfg):
    """One line when MODEL.WEIGHTS sits next to its training run's config.yaml and that run
    used other test sizes than this evaluation (e.g. trained with SCALE=data, evaluated
    without); None otherwise."""
    import yaml

    path = os.path.join(os.path.dirname(os.path.abspath(cfg.MODEL.WEIGHTS)), "config.yaml")
    try:
        with open(path) as f:
            trained = yaml.safe_load(f)["INPUT"]
        then = (int(trained["MIN_SIZE_TEST"]), int(trained["MAX_SIZE_TEST"]))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
    now = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    if then == now:
        return None
    return (f"the training run of {cfg.MODEL.WEIGHTS} evaluated at INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST {then[0]}/{then[1]} "
            f"({path}), this evaluation at {now[0]}/{now[1]}: pass the training's SCALE (train_net.py --scale) "
            "to compare like with like")


def evaluate(cfg, args):
    differ = training_sizes_differ(cfg)
    if differ:
        logging.getLogger("detectron2").warning(differ)
    model, role = build_eval_model(cfg, args.eval_teacher)  # strict: no re-init at evaluation
    checkpointer = MGDCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strip_prefix=role.prefix, role=role)
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
    resumed = args.resume and checkpointer.has_checkpoint()  # then OUTPUT_DIR's last checkpoint was loaded
    weights = checkpointer.get_checkpoint_file() if resumed else cfg.MODEL.WEIGHTS
    results = MGDTrainer.test(cfg, model)
    if comm.is_main_process():
        report_empty(results, list(cfg.DATASETS.TEST), cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
        verify_results(cfg, results)
        network = role.value  # "teacher", "student" or "retinanet"
        about = provenance(weights, args.config_file, args.opts, [dataset_sizes(n) for n in cfg.DATASETS.TEST],
                           code_dir=REPO_ROOT, network=network)
        save_results(results, os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), about)
    return results


def record_scale(cfg, args):
    """State the --scale in the first line of OUTPUT_DIR/config.yaml (its sizes are in it)."""
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if not (comm.is_main_process() and os.path.isfile(path)):
        return
    with open(path) as f:
        text = f.read()
    with open(path + ".part", "w") as f:
        f.write(f"# train_net.py --scale {args.scale} (make SCALE={args.scale}): INPUT sizes below\n" + text)
    os.replace(path + ".part", path)


def main(args):
    cfg, notes = setup_config(args)
    if args.eval_only and comm.is_main_process():  # nothing of an earlier evaluation is overwritten
        kept = keep_earlier_evaluation(cfg.OUTPUT_DIR, replace=args.replace_eval)
        if kept:
            print(kept, flush=True)
    quiet_console(cfg.OUTPUT_DIR, comm.get_rank())  # long listings to log.txt only
    default_setup(cfg, args)  # logs, and saves the final config to OUTPUT_DIR/config.yaml
    record_scale(cfg, args)
    logger = logging.getLogger("detectron2")
    logger.info(describe_detectron2(REPO_ROOT, os.path.dirname(detectron2.__file__)))
    for note in notes:
        logger.info(note)
    if is_training(args) and args.resume and not os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        logger.info(f"--resume: no checkpoint in {cfg.OUTPUT_DIR} yet; starting from MODEL.WEIGHTS at iteration 0")
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
    parser.add_argument("--scale", default="coco",
                        help="input sizes: coco (the config's, default), data (the training images' own "
                             "size) or a shorter side in pixels; the same for training, probe and evaluation")
    parser.add_argument("--fresh", action="store_true",
                        help="train into an OUTPUT_DIR that holds an earlier run: move its files aside to "
                             "OUTPUT_DIR-replaced-<date>/ and start at iteration 0 (else: --resume)")
    return parser


def max_iterations(cfg, args) -> int:
    """SOLVER.MAX_ITER as the trainer runs it (after the auto-scaling to the process count)."""
    return scale_to_world_size(cfg, args.num_gpus * args.num_machines).SOLVER.MAX_ITER


def _checkpoint_state(output_dir):
    """(name in last_checkpoint, its modification time), to tell a checkpoint saved by this run."""
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            name = f.read().strip()
        return name, os.path.getmtime(os.path.join(output_dir, name))
    except OSError:
        return None, None


def _wait_for_processes(seconds=60.0):
    """After Ctrl-C in a multi-process run: let the processes save and exit, then stop them."""
    import multiprocessing
    import time

    deadline = time.monotonic() + seconds
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
    for child in multiprocessing.active_children():
        child.terminate()


def interrupted_line(cfg, args, before) -> str:
    """The one line that ends a Ctrl-C: what was saved and how to go on."""
    if not is_training(args):
        return "interrupted: nothing was written"
    name, mtime = _checkpoint_state(cfg.OUTPUT_DIR)
    saved = name is not None and (name, mtime) != before
    path = os.path.join(cfg.OUTPUT_DIR, name) if name else None
    if saved and name == "model_final.pth":
        return (f"interrupted after training ended: {path} is saved; its evaluation did not finish "
                "(run it with --eval-only, make eval)")
    if saved:
        step = name[len("model_"):-len(".pth")]
        done = (f" (the state after iteration {int(step)}, counted from 0: {int(step) + 1} of "
                f"{max_iterations(cfg, args)} done)") if step.isdigit() else ""
        return f"interrupted: saved {path}{done}; resume with: {resume_command(args)}"
    if name:
        return f"interrupted before an iteration finished: nothing new saved ({path} is the last); " \
               f"resume with: {resume_command(args)}"
    return "interrupted before the first iteration finished: nothing saved; run the same command to start again"


def run(argv=None) -> int:
    """The command line: every check, then the run; a user error ends it with one line
    (``mgd.cli.run_cli``: ``error: ...``, exit code 2), Ctrl-C with the line that says what
    was saved (exit code 130)."""
    args = build_parser().parse_args(argv)
    cfg = before = None
    try:
        cfg = check_run(args)  # errors first: before any log line, output folder or process
        if is_training(args) and args.resume:
            finished = finished_run(cfg, max_iterations(cfg, args))
            if finished:
                print(finished, flush=True)
                return 0
            resumed_from = checkpoint_iteration(cfg.OUTPUT_DIR)
            if resumed_from and args.machine_rank == 0:
                forgotten = forget_logs_after(cfg.OUTPUT_DIR, resumed_from[1])
                if forgotten:
                    print(forgotten, flush=True)
        if is_training(args) and args.fresh and args.machine_rank == 0:
            moved = move_previous_run(cfg.OUTPUT_DIR)
            if moved:
                print(f"--fresh: the earlier run's files in {cfg.OUTPUT_DIR} moved to {moved}/")
        before = _checkpoint_state(cfg.OUTPUT_DIR)
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,))
    except KeyboardInterrupt:
        if args.num_gpus * args.num_machines > 1:
            _wait_for_processes()
        sys.stdout.flush()
        print(interrupted_line(cfg, args, before) if cfg is not None else "interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(run))
