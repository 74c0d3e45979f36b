"""Configs from configs/ work as given: their ``_BASE_: "../Base-RetinaNet.yaml"``
resolves against the checkout's configs/COCO-Detection/ without copying them there, to the
same config as Detectron2 loads from a copy laid out as in the checkout."""
import subprocess

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

from d2_support import CHECKOUT, REPO, config_dir, import_overlay  # noqa: E402

import_overlay()

from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine.mgd_config_file import ConfigError, load_config  # noqa: E402

from mgd.config import add_mgd_config  # noqa: E402

CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def _detectron2_loads(path):
    """The reference: Detectron2's own merge_from_file, where _BASE_ resolves as written."""
    cfg = add_mgd_config(get_cfg())
    cfg.merge_from_file(str(path))
    return cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_config_from_configs_equals_detectron2s_load_of_a_checkout_layout_copy(name, tmp_path):
    with pytest.raises(FileNotFoundError):  # what a plain merge_from_file does with it
        _detectron2_loads(REPO / "configs" / name)
    expected = _detectron2_loads(config_dir(tmp_path) / name).dump()
    assert load_config(str(REPO / "configs" / name), []).dump() == expected
    # the copy `make overlay` puts in the checkout loads the same
    copy = CHECKOUT / "configs" / "COCO-Detection" / name
    if copy.exists() and copy.read_bytes() == (REPO / "configs" / name).read_bytes():
        assert load_config(str(copy), []).dump() == expected


def test_a_user_config_inheriting_from_configs_resolves_the_whole_chain(tmp_path):
    mine = tmp_path / "elsewhere" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text(f'_BASE_: "{REPO / "configs" / "demo_mgd_R50_R18.yaml"}"\nMGD:\n  REDUCER: "sm"\n')
    cfg = load_config(str(mine), ["SOLVER.MAX_ITER", "7"])
    expected = _detectron2_loads(config_dir(tmp_path) / "demo_mgd_R50_R18.yaml")
    expected.MGD.REDUCER, expected.SOLVER.MAX_ITER = "sm", 7
    assert cfg.dump() == expected.dump()


def test_a_base_found_nowhere_is_one_line(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text('_BASE_: "../Base-Nothing.yaml"\n')
    with pytest.raises(ConfigError, match="_BASE_ '../Base-Nothing.yaml' not found next to it nor in"):
        load_config(str(mine), [])


def test_make_defaults_point_at_configs():
    def value(name, *args):
        return subprocess.run(["make", "--no-print-directory", f"print-{name}", *args], cwd=REPO,
                              stdout=subprocess.PIPE, text=True, check=True).stdout.strip()

    assert value("BASE_CONFIG", "DEPTH=18") == "configs/retinanet_torchvision_R_18_FPN_1x.yaml"
    assert value("MGD_CONFIG") == "configs/mgd_retinanet_R50_R18_FPN_1x.yaml"
    assert value("EVAL_CONFIG") == "configs/mgd_retinanet_R50_R18_FPN_1x.yaml"
