"""Strict checkpoint loading on real Detectron2 models and through train_net.py and make.

Weights are the state dicts of the demo configs' own RetinaNets (random init), so every
shape is the real one. A wrong checkpoint ends in one ``error:`` line
that names the file and the network, exit code 2, nothing written; a training on another
label set re-initialises the classifier with one line; random-init weights say so.
"""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not built here (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import (  # noqa: E402
    REPO,
    detectron2_env,
    TINY_INPUT,
    import_overlay,
    load_cfg,
    make_synthetic_dataset,
    run_train_net,
    synthetic_dataset_args,
)

from mgd.checkpoint import (  # noqa: E402
    CheckpointError,
    Role,
    is_random_init,
    load_checkpoint_object,
    match_keys,
    merge_teacher_student,
    save_d2_pickle,
)

R18, R50, MGD = "demo_retinanet_R_18.yaml", "demo_retinanet_R_50.yaml", "demo_mgd_R50_R18.yaml"
FASTER_MGD = "demo_mgd_faster_rcnn_R50_R18.yaml"
BOTTOM_UP = "backbone.bottom_up."


def build(tmp_root, config, opts=()):
    from detectron2.modeling import build_model

    import_overlay()
    torch.manual_seed(0)
    return build_model(load_cfg(tmp_root, config, opts))


def numpy_state(model):
    return {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Weights files with the demo networks' real shapes."""
    root = tmp_path_factory.mktemp("strict_weights")
    r18, r50 = numpy_state(build(root, R18)), numpy_state(build(root, R50))
    backbone18 = {k[len(BOTTOM_UP):]: v for k, v in r18.items() if k.startswith(BOTTOM_UP)}
    backbone50 = {k[len(BOTTOM_UP):]: v for k, v in r50.items() if k.startswith(BOTTOM_UP)}
    paths = {"root": root}
    for name, state in (("student.pkl", r18), ("teacher.pkl", r50)):  # split outputs
        paths[name] = root / name
        save_d2_pickle(state, paths[name])
    paths["T50-S18.pkl"] = root / "T50-S18.pkl"
    save_d2_pickle(merge_teacher_student(r50, backbone18), paths["T50-S18.pkl"])
    paths["T18-S50.pkl"] = root / "T18-S50.pkl"  # teacher and student swapped
    save_d2_pickle(merge_teacher_student(r18, backbone50), paths["T18-S50.pkl"])
    paths["r-50.pkl"] = root / "r-50.pkl"  # an ImageNet-style backbone
    save_d2_pickle(backbone50, paths["r-50.pkl"], author="torchvision")
    paths["r-18.random.pkl"] = root / "r-18.random.pkl"
    save_d2_pickle(backbone18, paths["r-18.random.pkl"], author="torchvision", random_init=True)
    paths["r-18.pkl"] = root / "r-18.pkl"
    save_d2_pickle(backbone18, paths["r-18.pkl"], author="torchvision")
    paths["student-80-classes.pkl"] = root / "student-80-classes.pkl"
    save_d2_pickle(numpy_state(build(root, R18, ["MODEL.RETINANET.NUM_CLASSES", "80"])),
                   paths["student-80-classes.pkl"])
    # two-stage detectors: a Faster R-CNN teacher merged as a RetinaNet config's, a Mask R-CNN student
    faster50 = numpy_state(build(root, "faster_rcnn_torchvision_R_50_FPN_1x.yaml", ["MODEL.ROI_HEADS.NUM_CLASSES", "4"]))
    paths["faster-T50-S18.pkl"] = root / "faster-T50-S18.pkl"
    save_d2_pickle(merge_teacher_student(faster50, backbone18), paths["faster-T50-S18.pkl"])
    paths["mask-student.pkl"] = root / "mask-student.pkl"
    save_d2_pickle(numpy_state(build(root, "faster_rcnn_torchvision_R_18_FPN_1x.yaml",
                                     ["MODEL.ROI_HEADS.NUM_CLASSES", "4", "MODEL.MASK_ON", "True"])),
                   paths["mask-student.pkl"])
    torch.save({"model": {k: torch.from_numpy(v) for k, v in r18.items()}, "iteration": 9},
               root / "r18_final.pth")
    paths["r18_final.pth"] = root / "r18_final.pth"
    return paths


# ---- the loader's key matching, reproduced -------------------------------------------------

def test_match_keys_pairs_what_detectron2_loads(files):
    """match_keys(heuristics=True) against Detectron2's align_and_update_state_dicts: the model
    keys whose values it replaced are exactly the pairs (of equal shape) we predict."""
    from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

    model = build(files["root"], R18)
    model_state = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in model.state_dict().items()}
    ckpt = {k: torch.ones_like(torch.from_numpy(v), dtype=torch.float32)
            for k, v in load_checkpoint_object(files["r-18.pkl"])["model"].items()}
    ckpt["cls_score.bias"] = torch.ones(model_state["head.cls_score.bias"].shape)  # short suffix
    ckpt["fpn_output3.weight"] = torch.ones(1)  # matches by name, wrong shape
    loaded = dict(model_state)
    returned = align_and_update_state_dicts(loaded, ckpt, c2_conversion=False)
    if returned is not None:  # today's Detectron2 returns the renamed checkpoint; the pin updates in place
        loaded = {k: returned.get(k, v) for k, v in model_state.items()}
    replaced = {k for k in model_state if loaded[k].numel() and bool((loaded[k] == 1).all())}
    pairs = match_keys(sorted(model_state), sorted(ckpt), heuristics=True)
    predicted = {m for m, c in pairs.items() if model_state[m].shape == ckpt[c].shape}
    assert replaced == predicted
    assert "head.cls_score.bias" in predicted and "backbone.bottom_up.res2.0.conv1.weight" in predicted
    assert pairs["backbone.fpn_output3.weight"] == "fpn_output3.weight"  # paired, then refused


# ---- MGDCheckpointer on real models ---------------------------------------------------------

def checkpointer(model, **kwargs):
    from detectron2.engine.mgd_checkpointer import MGDCheckpointer

    return MGDCheckpointer(model, **kwargs)


def test_evaluation_refuses_the_teacher_for_the_student(files):
    model = build(files["root"], R18)
    with pytest.raises(CheckpointError, match=r"teacher.pkl' is ResNet-50 .* the student being "
                                              r"evaluated is ResNet-18; a teacher where"):
        checkpointer(model, strip_prefix="s_net.").load(str(files["teacher.pkl"]))


def test_mgd_training_refuses_swapped_teacher_and_student(files):
    model = build(files["root"], MGD)
    with pytest.raises(CheckpointError, match=r"its teacher \(t_net.\*\) is ResNet-18"):
        checkpointer(model).load(str(files["T18-S50.pkl"]))
    checkpointer(model).load(str(files["T50-S18.pkl"]))  # the right way round loads


@pytest.fixture
def caplog(caplog, monkeypatch):
    """pytest's caplog, reaching the records even after an earlier test in this process set up
    Detectron2's logger (setup_logger turns its propagation off)."""
    for name in ("detectron2", "detectron2.mgd"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    return caplog


def test_fine_tuning_reinitialises_only_the_classifier_with_one_line(files, caplog):
    model = build(files["root"], R18, ["MODEL.RETINANET.NUM_CLASSES", "7"])
    init_cls = model.head.cls_score.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="detectron2.mgd"):
        checkpointer(model).load(str(files["student.pkl"]))
    lines = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert len(lines) == 1 and "head.cls_score.weight (36, " in lines[0]
    assert torch.equal(model.head.cls_score.weight, init_cls)  # left at its initialisation
    stored = load_checkpoint_object(files["student.pkl"])["model"]
    assert torch.equal(model.head.bbox_pred.weight, torch.from_numpy(stored["head.bbox_pred.weight"]))


def test_evaluation_never_reinitialises_the_classifier(files):
    model = build(files["root"], R18, ["MODEL.RETINANET.NUM_CLASSES", "7"])
    with pytest.raises(CheckpointError, match=r"'head.cls_score.bias' has shape \(36,\) in the "
                                              r"file and \(63,\) in the model"):
        checkpointer(model, role=Role.RETINANET).load(str(files["student.pkl"]))


def test_random_init_weights_say_so_and_stay_marked(files, tmp_path, caplog):
    model = build(files["root"], R18)
    with caplog.at_level(logging.WARNING, logger="detectron2.mgd"):
        plain = checkpointer(model, save_dir=str(tmp_path / "plain"))
        plain.load(str(files["r-18.pkl"]))
    assert not [r for r in caplog.records if "RANDOMLY" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="detectron2.mgd"):
        marked = checkpointer(model, save_dir=str(tmp_path / "marked"))
        marked.load(str(files["r-18.random.pkl"]))
    lines = [r.getMessage() for r in caplog.records if "RANDOMLY" in r.getMessage()]
    assert len(lines) == 1 and "r-18.random.pkl" in lines[0]
    os.makedirs(tmp_path / "plain"), os.makedirs(tmp_path / "marked")
    plain.save("model_final"), marked.save("model_final")
    assert not is_random_init(load_checkpoint_object(tmp_path / "plain" / "model_final.pth"))
    assert is_random_init(load_checkpoint_object(tmp_path / "marked" / "model_final.pth"))


# ---- one module decides (mgd.checkpoint.strict) --------------------------------------------

def test_the_loaders_refuse_what_the_strict_module_refuses(files, monkeypatch):
    """The config check (train_net.py's), MGDCheckpointer and measure_matched_cost.py's loader
    all ask mgd.checkpoint.strict: with its kind/depth rule replaced by "refuse everything",
    files they accept are refused with its line."""
    import importlib.util

    import mgd.checkpoint.strict as strict
    from detectron2.engine.mgd_checkpointer import check_weights_for_config

    model = build(files["root"], MGD)
    cfg = load_cfg(files["root"], MGD, ["MODEL.WEIGHTS", str(files["T50-S18.pkl"])])
    spec = importlib.util.spec_from_file_location("measure_matched_cost",
                                                  REPO / "scripts" / "measure_matched_cost.py")
    measure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure)
    loads = {
        "config": lambda: check_weights_for_config(cfg, Role.MGD_TRAINING),
        "checkpointer": lambda: checkpointer(model).load(str(files["T50-S18.pkl"])),
        "measure": lambda: measure.load_network(model.t_net, str(files["teacher.pkl"]), Role.TEACHER),
    }
    for load in loads.values():
        load()  # the rules in place: accepted

    def refuse(*args, **kwargs):
        raise CheckpointError("strict says no")

    monkeypatch.setattr(strict, "check_checkpoint_role", refuse)
    for name, load in loads.items():
        with pytest.raises(CheckpointError, match="strict says no"):
            load()


# ---- through train_net.py -------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_strict", train=2, val=2)


def assert_refused(proc, out: Path, *words) -> str:
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert len(errors) == 1 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    assert not out.exists(), f"{out} was written by a refused run"
    return errors[0]


@pytest.mark.parametrize("flags, config, weights, words", [
    (["--eval-only", "--eval-teacher"], MGD, "student.pkl",
     ["student.pkl", "the teacher being evaluated is ResNet-50", "drop --eval-teacher"]),
    (["--eval-only"], MGD, "teacher.pkl",
     ["teacher.pkl", "the student being evaluated is ResNet-18", "--eval-teacher"]),
    ([], MGD, "T18-S50.pkl", ["T18-S50.pkl", "its teacher (t_net.*) is ResNet-18"]),
    ([], MGD, "student.pkl", ["student.pkl", "not a teacher+student file", "make merge"]),
    ([], R18, "r-50.pkl", ["r-50.pkl", "the detector being trained is ResNet-18"]),
    (["--eval-only"], R18, "T50-S18.pkl", ["T50-S18.pkl", "MGD distillation checkpoint"]),
    (["--eval-only"], MGD, "student-80-classes.pkl",
     ["student-80-classes.pkl", "trained for 80 classes", "NUM_CLASSES 4"]),
    ([], MGD, "faster-T50-S18.pkl",
     ["faster-T50-S18.pkl", "holds a Faster R-CNN, but the config's teacher is a RetinaNet"]),
    (["--eval-only"], FASTER_MGD, "mask-student.pkl",
     ["mask-student.pkl", "holds a Mask R-CNN, but the student being evaluated is a Faster R-CNN"]),
], ids=["teacher-eval-of-student", "student-eval-of-teacher", "mgd-swapped", "mgd-from-one-net",
        "base-wrong-depth", "plain-eval-of-distillation", "eval-other-class-count", "mgd-faster-teacher-for-retinanet",
        "eval-mask-rcnn-as-faster-rcnn"])
def test_train_net_refuses_the_wrong_checkpoint(files, synth, tmp_path, flags, config, weights, words):
    out = tmp_path / "out"
    proc = run_train_net([*flags, "--config-file", REPO / "configs" / config,
                          "MODEL.WEIGHTS", files[weights], "OUTPUT_DIR", out, *TINY_INPUT],
                         synth, check=False, timeout=300)
    assert_refused(proc, out, *words)


@pytest.mark.slow
def test_the_r_cnn_key_names_of_the_framework_free_tests_are_detectron2s(files):
    """tests/checkpoint/test_strict.py builds R-CNN files from scripts_support.rcnn_state_dict."""
    from scripts_support import rcnn_state_dict

    for mask in (False, True):
        built = build(files["root"], "faster_rcnn_torchvision_R_18_FPN_1x.yaml", ["MODEL.MASK_ON", str(mask)])
        assert sorted(built.state_dict()) == sorted(rcnn_state_dict(18, mask))


def test_train_net_fine_tuning_on_another_label_set_reinitialises_the_classifier(files, synth, tmp_path):
    # a detector trained on 80 classes, fine-tuned on the 4-class synthetic set
    coco = build(files["root"], R18, ["MODEL.RETINANET.NUM_CLASSES", "80"])
    torch.save({"model": coco.state_dict()}, tmp_path / "coco_final.pth")
    proc = run_train_net(["--config-file", REPO / "configs" / R18,
                          "MODEL.WEIGHTS", tmp_path / "coco_final.pth", "DATASETS.TEST", "()",
                          "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2",
                          "OUTPUT_DIR", tmp_path / "out", *TINY_INPUT], synth, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if "re-initialised" in line]
    assert len(lines) == 1 and "head.cls_score.weight (720, " in lines[0], proc.stdout[-3000:]


@pytest.mark.slow
def test_train_net_from_random_init_weights_says_so_and_marks_its_checkpoint(files, synth, tmp_path):
    out = tmp_path / "out"
    proc = run_train_net(["--config-file", REPO / "configs" / R18,
                          "MODEL.WEIGHTS", files["r-18.random.pkl"], "DATASETS.TEST", "()",
                          "SOLVER.MAX_ITER", "1", "SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", out,
                          *TINY_INPUT], synth, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if "RANDOMLY INITIALISED" in line]
    assert len(lines) == 1 and "r-18.random.pkl" in lines[0], proc.stdout[-3000:]
    assert is_random_init(load_checkpoint_object(out / "model_final.pth"))


# ---- through make ---------------------------------------------------------------------------

def make(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(["make", "--no-print-directory", *map(str, args), f"PYTHON={sys.executable}"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def test_make_eval_teacher_reads_the_teachers_file_and_refuses_the_student(files, synth, tmp_path):
    mgd_output = tmp_path / "mgd"
    mgd_output.mkdir()
    (mgd_output / "model_final.pkl").write_bytes(files["student.pkl"].read_bytes())
    datasets = " ".join(str(a) for a in synthetic_dataset_args(synth) if a != "--dataset")
    common = [f"MGD_OUTPUT={mgd_output}", f"EVAL_CONFIG={REPO / 'configs' / MGD}",
              f"DATASETS={datasets}", "EVAL_TEACHER=1"]
    proc = make("eval", *common)  # only the student's file is there: not read for the teacher
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stdout[-3000:]
    assert "model_final.teacher.pkl not found" in errors[0], errors[0]
    assert "Traceback" not in proc.stdout and not (mgd_output / "eval-teacher").exists()
    # the student's weights under the teacher's name: refused by their depth
    (mgd_output / "model_final.teacher.pkl").write_bytes(files["student.pkl"].read_bytes())
    proc = make("eval", *common)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stdout[-3000:]
    assert "the teacher being evaluated is ResNet-50" in errors[0]
    assert not (mgd_output / "eval-teacher").exists()


def test_make_convert_all_keeps_student_and_teacher_apart(files, tmp_path):
    """make convert-all (student) and make convert-all EVAL_TEACHER=1 (teacher), either order."""
    from mgd.checkpoint import resnet_depth

    mgd_output = tmp_path / "mgd"
    mgd_output.mkdir()
    model = build(files["root"], MGD)
    torch.save({"model": model.state_dict(), "iteration": 9}, mgd_output / "model_final.pth")
    for teacher in (True, False, True):
        proc = make("convert-all", f"MGD_OUTPUT={mgd_output}", *(["EVAL_TEACHER=1"] if teacher else []))
        assert proc.returncode == 0, proc.stdout[-3000:]
    assert "model_final.pth -> model_final.teacher.pkl" in proc.stdout
    depth = {name: resnet_depth(load_checkpoint_object(mgd_output / name)["model"], BOTTOM_UP)
             for name in ("model_final.pkl", "model_final.teacher.pkl")}
    assert depth == {"model_final.pkl": 18, "model_final.teacher.pkl": 50}


@pytest.mark.slow
def test_make_weights_never_takes_random_weights_for_imagenet_ones(tmp_path):
    weights = tmp_path / "weights"

    def kind(depth):
        return "random" if is_random_init(load_checkpoint_object(weights / f"r-{depth}.pkl")) else "pretrained"

    proc = make("weights", "RANDOM_INIT=1", f"WEIGHTS_DIR={weights}")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert kind(18) == kind(50) == "random"
    # stand-ins for the downloaded ImageNet files (same format), so nothing is downloaded
    for depth in (18, 50):
        (weights / f"resnet{depth}.pth").write_bytes((weights / f"resnet{depth}-random.pth").read_bytes())
    proc = make("weights", f"WEIGHTS_DIR={weights}")
    assert proc.returncode == 0 and "kept" not in proc.stdout, proc.stdout[-3000:]
    assert proc.stdout.count("holds random-init weights") == 2
    assert kind(18) == kind(50) == "pretrained"
    before = (weights / "r-18.pkl").read_bytes()
    proc = make("weights", "RANDOM_INIT=1", f"WEIGHTS_DIR={weights}")
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and "holds ImageNet weights" in errors[0]
    assert (weights / "r-18.pkl").read_bytes() == before
    proc = make("weights", f"WEIGHTS_DIR={weights}")
    assert proc.returncode == 0 and proc.stdout.count("(pretrained weights), kept") == 2, proc.stdout


def test_measure_matched_cost_runs_one_pass_over_every_image(files, synth, tmp_path):
    """The matched-cost tool's success path (the demo's last step): both networks load, one
    matching pass sees each val image once, and the costs are written."""
    import json

    out = tmp_path / "cost.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "measure_matched_cost.py"), *synthetic_dataset_args(synth),
         "--config-file", str(REPO / "configs" / MGD), "--teacher", str(files["teacher.pkl"]),
         "--student", str(files["student.pkl"]), "--split", "mgd_synth_val", "--out", str(out), *TINY_INPUT],
        env=dict(detectron2_env(), OMP_NUM_THREADS="2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["images"] == 2 and sorted(result["costs"]) == ["c2", "c3", "c4", "c5"]
    assert "over 2 images" in proc.stdout
