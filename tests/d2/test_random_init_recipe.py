"""Training from random init: weights marked random-init (``make weights
RANDOM_INIT=1``) are trained only with a recipe meant for them (every stage trained, gradient
clipping: ``configs/*_random_init.yaml``, picked by ``make ... RANDOM_INIT=1``); the COCO configs
are refused before anything runs, with one line naming that recipe. For a merged checkpoint the
student's own norm statistics tell whether the mark is the student's."""
import subprocess
import sys

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import (  # noqa: E402
    CHECKOUT,
    REPO,
    TINY_INPUT,
    import_overlay,
    load_cfg,
    make_synthetic_dataset,
    run_train_net,
    synthetic_dataset_args,
)
from scripts_support import assert_refused, run_make  # noqa: E402

import_overlay()

from detectron2.engine.mgd_config_file import ConfigError  # noqa: E402
from detectron2.engine.mgd_weights_checks import check_random_init_recipe  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from mgd.checkpoint import RANDOM_INIT_KEY  # noqa: E402

R18_COCO, R18_RANDOM = "retinanet_torchvision_R_18_FPN_1x.yaml", "retinanet_torchvision_R_18_FPN_1x_random_init.yaml"
MGD_COCO, MGD_RANDOM = "mgd_retinanet_R50_R18_FPN_1x.yaml", "mgd_retinanet_R50_R18_FPN_1x_random_init.yaml"


def _save(state, path, marked=True):
    torch.save({"model": state, **({RANDOM_INIT_KEY: True} if marked else {})}, path)
    return path


def _check(tmp_path, config, weights):
    check_random_init_recipe(load_cfg(tmp_path, config, ["MODEL.WEIGHTS", str(weights)]))


@pytest.fixture(scope="module")
def r18_state(tmp_path_factory):
    torch.manual_seed(0)
    return build_model(load_cfg(tmp_path_factory.mktemp("cfg"), R18_RANDOM)).state_dict()


@pytest.fixture(scope="module")
def mgd_state(tmp_path_factory):
    torch.manual_seed(0)
    return build_model(load_cfg(tmp_path_factory.mktemp("cfg"), MGD_RANDOM)).state_dict()


def test_the_coco_config_is_refused_for_random_init_weights(tmp_path, r18_state):
    weights = _save(r18_state, tmp_path / "random.pth")
    with pytest.raises(ConfigError) as error:
        _check(tmp_path, R18_COCO, weights)
    message = str(error.value)
    assert "\n" not in message
    assert "MODEL.BACKBONE.FREEZE_AT 2" in message and "no gradient clipping" in message
    assert "make ... RANDOM_INIT=1 (--config-file configs/retinanet_torchvision_R_18_FPN_1x_random_init.yaml" in message


def test_the_random_init_configs_and_the_demo_recipe_are_accepted(tmp_path, r18_state):
    weights = _save(r18_state, tmp_path / "random.pth")
    _check(tmp_path, R18_RANDOM, weights)
    _check(tmp_path, "demo_retinanet_R_18.yaml", weights)
    cfg = load_cfg(tmp_path, R18_RANDOM, ["MODEL.WEIGHTS", str(weights)])
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.RESNETS.STAGE_LAST_NORM == "GN"
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.BASE_LR == 0.01  # otherwise the COCO config's


def test_unmarked_weights_are_not_checked(tmp_path, r18_state):
    _check(tmp_path, R18_COCO, _save(r18_state, tmp_path / "pretrained.pth", marked=False))


def test_a_merged_checkpoint_with_a_random_init_student(tmp_path, mgd_state):
    weights = _save(mgd_state, tmp_path / "merged.pth")  # fresh FrozenBN: running var 1 - 1e-5
    with pytest.raises(ConfigError, match=r"holds the student's random-init weights .* MGD.STUDENT.FREEZE_AT 1 .*"
                                          r"configs/mgd_retinanet_R50_R18_FPN_1x_random_init.yaml"):
        _check(tmp_path, MGD_COCO, weights)
    _check(tmp_path, MGD_RANDOM, weights)


def test_a_merged_checkpoint_whose_mark_comes_from_the_teacher(tmp_path, mgd_state):
    """An ImageNet student (trained norm statistics) with a random-init teacher: the COCO MGD
    recipe trains the student as usual."""
    state = dict(mgd_state)
    for key in [k for k in state if k.startswith("s_net.backbone.bottom_up.") and k.endswith("running_var")]:
        state[key] = torch.full_like(state[key], 0.37)
    _check(tmp_path, MGD_COCO, _save(state, tmp_path / "merged.pth"))


@pytest.fixture(scope="module")
def marked_weights(tmp_path_factory):
    """weights/r-18.pkl as `make weights RANDOM_INIT=1` writes it."""
    root = tmp_path_factory.mktemp("random_weights")
    for cmd in ([REPO / "scripts" / "make_random_torchvision_weights.py", "--depth", "18", root / "resnet18.pth"],
                [CHECKOUT / "tools" / "convert-torchvision-to-d2.py", root / "resnet18.pth", root / "r-18.pkl"],
                [REPO / "scripts" / "random_init_marker.py", "mark", root / "r-18.pkl"]):
        subprocess.run([sys.executable, *cmd], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return root


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_random_init", train=4, val=2)


def test_train_net_refuses_random_init_weights_with_the_coco_config(tmp_path, marked_weights, synth):
    out = tmp_path / "out"
    proc = run_train_net(["--config-file", REPO / "configs" / R18_COCO, "MODEL.WEIGHTS", marked_weights / "r-18.pkl",
                          "DATASETS.TRAIN", "('mgd_synth_train',)", "DATASETS.TEST", "()",
                          "MODEL.RETINANET.NUM_CLASSES", "4", "OUTPUT_DIR", out], synth, check=False, cwd=tmp_path)
    assert_refused(proc, "holds random-init weights (make weights RANDOM_INIT=1), which this config would train "
                         "with MODEL.BACKBONE.FREEZE_AT 2", out)


def _make_base(tmp_path, synth, weights, *extra):
    datasets = " ".join(str(w) for w in synthetic_dataset_args(synth) if w != "--dataset")
    sizes = " ".join(TINY_INPUT).replace("(64,)", '"(64,)"')
    opts = (f"DATASETS.TRAIN \"('mgd_synth_train',)\" DATASETS.TEST \"()\" MODEL.RETINANET.NUM_CLASSES 4 "
            f"SOLVER.IMS_PER_BATCH 2 SOLVER.MAX_ITER 2 {sizes}")
    return run_make("base", "DEPTH=18", f"WEIGHTS_DIR={weights}", f"OUTPUT_DIR={tmp_path}", f"DATASETS={datasets}",
                    f"OPTS={opts}", *extra)


@pytest.mark.slow
def test_make_base_names_random_init_1_and_trains_with_it(tmp_path, marked_weights, synth):
    refused = _make_base(tmp_path, synth, marked_weights)
    assert_refused(refused, "from random init use the demo's recipe: make ... RANDOM_INIT=1", tmp_path / "base-R18")
    trained = _make_base(tmp_path, synth, marked_weights, "RANDOM_INIT=1")
    assert trained.returncode == 0, trained.stdout[-3000:]
    assert "--config-file configs/retinanet_torchvision_R_18_FPN_1x_random_init.yaml" in trained.stdout
    assert "holds RANDOMLY INITIALISED weights" in trained.stdout
    final = torch.load(tmp_path / "base-R18" / "model_final.pth", map_location="cpu", weights_only=True)
    assert final[RANDOM_INIT_KEY] is True  # the mark travels on to merge and distill
