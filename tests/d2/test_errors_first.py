"""Errors first: a bad input to train_net.py or a make target ends in one
``error:`` line near the top of the output, a non-zero exit code, no traceback, and nothing
written (no OUTPUT_DIR). Validation returns before any model is built, so these are fast."""
import subprocess
import sys

import pytest

from d2_support import REPO, detectron2_env, make_synthetic_dataset, run_train_net, synthetic_dataset_args
from scripts_support import assert_refused, load_file, run_make

MGD_DEMO = REPO / "configs" / "demo_mgd_R50_R18.yaml"
R18_DEMO = REPO / "configs" / "demo_retinanet_R_18.yaml"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_errors", train=2, val=2)


@pytest.fixture
def merged(tmp_path):
    """A stand-in for MODEL.WEIGHTS where the check under test comes first."""
    path = tmp_path / "T50-S18.pkl"
    path.write_bytes(b"not read: an earlier check refuses the run")
    return path


# (flags, KEY VALUE overrides, expected part of the error line); the config: the MGD demo's
TRAIN_NET_CASES = {
    "reducer": ([], ["MGD.REDUCER", "amx"], "MGD.REDUCER 'amx' is not a reducer; use one of amp, rd, sp, sm"),
    "ignore-index-out-of-range": ([], ["MGD.IGNORE_INDS", "[9]"], "MGD.IGNORE_INDS [9]: indices must be in 0..8"),
    "ignore-all": ([], ["MGD.IGNORE_INDS", "[0,1,2,3,4,5,6,7,8]"], "leaves no position to distil"),
    "misspelt-key": ([], ["MGD.REDUCR", "amp"],
                     "unknown config key MGD.REDUCR on the command line (did you mean MGD.REDUCER?)"),
    "teacher-depth": ([], ["MGD.TEACHER.DEPTH", "35"], "MGD.TEACHER.DEPTH 35 is not a ResNet depth"),
    "eval-teacher-of-a-plain-config": (["--eval-only", "--eval-teacher", "--config-file", R18_DEMO], [],
                                       "--eval-teacher needs --eval-only and an MGD config"),
}


@pytest.mark.detectron2
@pytest.mark.parametrize("case", sorted(TRAIN_NET_CASES))
def test_train_net_refuses_bad_config(case, tmp_path, synth, merged):
    flags, opts, message = TRAIN_NET_CASES[case]
    config = [] if "--config-file" in flags else ["--config-file", MGD_DEMO]
    out = tmp_path / "out"
    proc = run_train_net([*flags, *config, "MODEL.WEIGHTS", merged, "OUTPUT_DIR", out, *opts], synth,
                         check=False, cwd=tmp_path)
    assert_refused(proc, message, out)


@pytest.mark.detectron2
def test_misspelt_key_in_a_config_file_and_base_outside_the_checkout(tmp_path, synth, merged):
    # a user's config inheriting from the repository's configs/ (whose own _BASE_ is resolved
    # against the checkout) with a typo
    mine = tmp_path / "mine.yaml"
    mine.write_text(f'_BASE_: "{MGD_DEMO}"\nMGD:\n  REDUCR: "sm"\n')
    out = tmp_path / "out"
    proc = run_train_net(["--config-file", mine, "MODEL.WEIGHTS", merged, "OUTPUT_DIR", out], synth,
                         check=False, cwd=tmp_path)
    assert_refused(proc, f"unknown config key MGD.REDUCR in {mine} (did you mean MGD.REDUCER?)", out)


@pytest.mark.detectron2
def test_missing_config_file(tmp_path):
    out = tmp_path / "out"
    proc = run_train_net(["--config-file", tmp_path / "nope.yaml", "OUTPUT_DIR", out], check=False, cwd=tmp_path)
    assert_refused(proc, f"config file {tmp_path / 'nope.yaml'} not found", out)


@pytest.mark.detectron2
def test_missing_weights_names_the_target_that_makes_them(tmp_path, synth):
    out = tmp_path / "out"
    proc = run_train_net(["--config-file", MGD_DEMO, "MODEL.WEIGHTS", tmp_path / "T50-S18.pkl",
                          "OUTPUT_DIR", out], synth, check=False, cwd=tmp_path)
    assert_refused(proc, "not found; make the merged teacher/student checkpoint with `make merge`", out)
    proc = run_train_net(["--eval-only", "--config-file", MGD_DEMO, "MODEL.WEIGHTS", tmp_path / "m.pkl",
                          "OUTPUT_DIR", out], synth, check=False, cwd=tmp_path)
    assert_refused(proc, "`make convert-all`", out)


@pytest.mark.detectron2
def test_unregistered_dataset(tmp_path, merged):
    out = tmp_path / "out"
    proc = run_train_net(["--config-file", MGD_DEMO, "MODEL.WEIGHTS", merged, "OUTPUT_DIR", out],
                         check=False, cwd=tmp_path)
    assert_refused(proc, "dataset 'mgd_synth_train' (DATASETS) is not registered; register your own with "
                         "train_net.py --dataset NAME JSON IMAGE_ROOT", out)


@pytest.mark.detectron2
def test_builtin_coco_without_its_files_says_where_they_are_looked_for(tmp_path, merged):
    out = tmp_path / "out"
    env_root = tmp_path / "no_datasets"
    proc = subprocess.run(
        [sys.executable, REPO / "train_net.py", "--config-file", REPO / "configs" / "mgd_retinanet_R50_R18_FPN_1x.yaml",
         "MODEL.WEIGHTS", merged, "OUTPUT_DIR", out],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
        env={**detectron2_env(), "DETECTRON2_DATASETS": str(env_root)},
    )
    line = assert_refused(proc, "dataset 'coco_2017_train': annotation file", out)
    assert str(env_root) in line and "--dataset NAME JSON IMAGE_ROOT" in line


# ------------------------------------------------------------------ make targets

def test_make_base_refuses_a_depth_other_than_18_or_50(tmp_path):
    proc = run_make("base", "DEPTH=34", f"OUTPUT_DIR={tmp_path / 'out'}")
    assert_refused(proc, "DEPTH must be 18 or 50", tmp_path / "out")


def test_make_base_without_weights_names_make_weights(tmp_path):
    proc = run_make("base", "DEPTH=18", f"WEIGHTS_DIR={tmp_path / 'w'}", f"OUTPUT_DIR={tmp_path / 'out'}")
    assert_refused(proc, f"{tmp_path / 'w' / 'r-18.pkl'} not found; run `make weights` first", tmp_path / "out")


def test_make_merge_without_a_teacher_names_make_base(tmp_path):
    merged = tmp_path / "T50-S18.pkl"
    proc = run_make("merge", f"TEACHER={tmp_path / 'model_final.pth'}", f"MERGED={merged}")
    assert_refused(proc, "run `make base DEPTH=50` or pass TEACHER=...", merged)


def test_make_merge_without_a_student_names_make_weights(tmp_path):
    teacher, merged = tmp_path / "model_final.pth", tmp_path / "T50-S18.pkl"
    teacher.write_bytes(b"x")
    proc = run_make("merge", f"TEACHER={teacher}", f"STUDENT={tmp_path / 'r-18.pkl'}", f"MERGED={merged}")
    assert_refused(proc, "run `make weights` or pass STUDENT=...", merged)


def test_make_distill_without_merged_weights_names_make_merge(tmp_path):
    proc = run_make("distill", f"MERGED={tmp_path / 'T50-S18.pkl'}", f"MGD_OUTPUT={tmp_path / 'mgd'}")
    assert_refused(proc, "run `make merge` or pass MERGED=...", tmp_path / "mgd")


def test_make_distill_refuses_datasets_not_in_triples(tmp_path, merged):
    proc = run_make("distill", f"MERGED={merged}", "DATASETS=mine train.json", f"MGD_OUTPUT={tmp_path / 'mgd'}")
    assert_refused(proc, "DATASETS takes NAME JSON IMAGE_ROOT triples, got 2 words", tmp_path / "mgd")


@pytest.mark.detectron2
def test_make_base_checks_the_class_count_of_a_dataset_passed_through(tmp_path, synth):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "r-18.pkl").write_bytes(b"not read: the dataset check comes first")
    datasets = " ".join(str(a) for a in synthetic_dataset_args(synth) if a != "--dataset")
    proc = run_make("base", "DEPTH=18", f"BASE_CONFIG={R18_DEMO}", f"WEIGHTS_DIR={weights}",
                    f"OUTPUT_DIR={tmp_path / 'out'}", f"DATASETS={datasets}", "OPTS=MODEL.RETINANET.NUM_CLASSES 5")
    assert_refused(proc, "dataset 'mgd_synth_train' has 4 categories but MODEL.RETINANET.NUM_CLASSES is 5; "
                         "set MODEL.RETINANET.NUM_CLASSES 4", tmp_path / "out")


# ------------------------------------------------------------------ every MGD key, in process
# (the same check_config train_net.py calls before anything is written; fast, no subprocess)
CONFIG_CASES = {
    "factor-zero-where-distilled": (["MGD.LOSS_FACTORS", "[5e7, 0, 5e6, 5e6, 0, 0, 0, 0, 0]"],
                                    "MGD.LOSS_FACTORS[1] (c3) is 0 but c3 is distilled"),
    "factors-count": (["MGD.LOSS_FACTORS", "[1.0, 1.0]"], "MGD.LOSS_FACTORS needs 9 entries"),
    "student-depth": (["MGD.STUDENT.DEPTH", "20"], "MGD.STUDENT.DEPTH 20 is not a ResNet depth"),
    "student-res2": (["MGD.STUDENT.RES2_OUT_CHANNELS", "256"], "MGD.STUDENT.RES2_OUT_CHANNELS must be 64 for R18"),
    "teacher-norm": (["MGD.TEACHER.NORM", "XN"], "MGD.TEACHER.NORM 'XN' is not a norm"),
    "stage-last-norm": (["MGD.STUDENT.STAGE_LAST_NORM", "gn"], "MGD.STUDENT.STAGE_LAST_NORM 'gn' is not a norm"),
    "schedule-length": (["MGD.UPDATE_FREQ", "[5]"], "MGD.UPDATE_FREQ needs one more entry than MGD.UPDATE_SLOW_STEP"),
    "schedule-order": (["MGD.UPDATE_FREQ", "[5, 5, 5]", "MGD.UPDATE_SLOW_STEP", "[20, 10]"],
                       "MGD.UPDATE_SLOW_STEP must be increasing"),
    "update-iter": (["MGD.UPDATE_ITER", "0"], "MGD.UPDATE_ITER must be >= 1"),
    "reference-world-size": (["MGD.REFERENCE_WORLD_SIZE", "-1"], "MGD.REFERENCE_WORLD_SIZE must be >= 0"),
    "matching-ranks": (["MGD.MATCHING_RANKS", "rank1"], "MGD.MATCHING_RANKS 'rank1': use 'all'"),
    "amp-precision": (["SOLVER.AMP.PRECISION", "fp16"], "SOLVER.AMP.PRECISION 'fp16': use one of auto, float16, bfloat16"),
}


@pytest.mark.detectron2
@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_check_config_refuses(case):
    from detectron2.engine.mgd_config_checks import check_config
    from detectron2.engine.mgd_config_file import ConfigError, load_config

    opts, message = CONFIG_CASES[case]
    check_config(load_config(str(MGD_DEMO), []))  # the demo config itself passes
    with pytest.raises(ConfigError) as caught:
        check_config(load_config(str(MGD_DEMO), opts))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.detectron2
def test_check_config_of_a_plain_retinanet():
    from detectron2.engine.mgd_config_checks import check_config
    from detectron2.engine.mgd_config_file import ConfigError, load_config

    check_config(load_config(str(R18_DEMO), []))
    with pytest.raises(ConfigError, match="MODEL.RESNETS.DEPTH 19 is not a ResNet depth"):
        check_config(load_config(str(R18_DEMO), ["MODEL.RESNETS.DEPTH", "19"]))
    with pytest.raises(ConfigError, match="--probe-loss-factors needs an MGD config"):
        check_config(load_config(str(R18_DEMO), []), probe=True)


# ---- one error type, one handler ---------------------------------------------------------------

#: entry points that check a build, not a user's input: their failures keep their own lines
#: (exit code 1 for a failed check) and they need no handler of user errors
BUILD_TOOLS = {"check_cuda_build.py", "run_detectron2_tests.py", "check_requirements.py",
               "patch_detectron2.py", "gpu_check.py", "download_torchvision_resnet.py"}


@pytest.mark.detectron2
def test_every_user_error_class_is_a_user_error():
    """Each class whose one line reaches the user derives from mgd.errors.UserError, so the one
    handler (mgd.cli.run_cli) turns it into ``error: ...`` and exit code 2."""
    import importlib

    from mgd.errors import UserError

    found = {"MeasureError": load_file(REPO / "scripts" / "measure_matched_cost.py").MeasureError}
    for module, name in (("mgd.checkpoint", "CheckpointError"),
                         ("detectron2.engine.mgd_scale", "ScaleError"),
                         ("detectron2.engine.mgd_config_file", "ConfigError"),
                         ("detectron2.data.mgd_datasets", "DatasetError"),
                         ("mgd_tools.plots", "PlotError"), ("mgd_tools.cuda_build_env", "BuildEnvError"),
                         ("mgd_tools.results_table", "ResultsError"),
                         ("mgd_tools.synthetic_coco", "SyntheticDataError"),
                         ("mgd.overlay", "OverlayError")):
        found[name] = getattr(importlib.import_module(module), name)
    assert [n for n, cls in found.items() if not issubclass(cls, UserError)] == []


def test_entry_points_leave_error_lines_to_the_one_handler():
    """No entry point prints its own ``error:`` line for a user error: it raises, and
    mgd.cli.run_cli (train_net.py's too) prints it."""
    import re

    own = re.compile(r"""print\(f?["']error""")
    files = [REPO / "train_net.py", *sorted((REPO / "scripts").glob("*.py"))]
    printing = [f.name for f in files if f.name not in BUILD_TOOLS and own.search(f.read_text())]
    assert printing == []
    entry_points = {f.name: f.read_text().split('if __name__ == "__main__":', 1)[1]
                    for f in files if f.name not in BUILD_TOOLS and 'if __name__ == "__main__":' in f.read_text()}
    assert len(entry_points) >= 10
    assert [name for name, body in entry_points.items() if "run_cli(" not in body] == []
