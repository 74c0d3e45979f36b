"""add_mgd_config only adds keys; the YAMLs (or their bases in configs/) carry INPUT.FORMAT and SOLVER.NESTEROV."""
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="Detectron2 not built here (run `make detectron2`)")
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

from detectron2.config import CfgNode, get_cfg  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from torch import nn  # noqa: E402

from d2_support import load_cfg  # noqa: E402

from mgd.config import add_mgd_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the keys add_mgd_config adds outside MGD.* where Detectron2 lacks them (today's Detectron2 has
# SOLVER.AMP.ENABLED itself, with the same default)
ADDED = {"MODEL.RESNETS.STAGE_LAST_NORM", "SOLVER.AMP.ENABLED", "SOLVER.AMP.PRECISION"}


class _Loader(yaml.SafeLoader):
    """Reads a config file's own keys; python tags (e.g. computed anchor sizes) become None."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def flatten(node: CfgNode, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, CfgNode):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def test_plain_config_keeps_every_upstream_value():
    upstream = flatten(get_cfg())
    added = flatten(add_mgd_config(get_cfg()))
    changed = {k: (v, added[k]) for k, v in upstream.items() if k not in added or added[k] != v}
    assert changed == {}
    new_keys = set(added) - set(upstream)
    assert {k for k in new_keys if not k.startswith("MGD.")} == ADDED - set(upstream)
    assert "MODEL.RESNETS.STAGE_LAST_NORM" in new_keys  # this project's own key: never upstream's


def test_mgd_defaults_are_the_originals():
    cfg = add_mgd_config(get_cfg())
    assert cfg.MGD.REDUCER == "amp"
    assert list(cfg.MGD.IGNORE_INDS) == [4, 5, 6, 7, 8]
    assert cfg.MGD.LOSS_FACTORS == pytest.approx([5e7, 5e7, 5e6, 5e6, 5e7, 5e7, 5e5, 0.0, 0.0])
    assert (cfg.MODEL.RESNETS.STAGE_LAST_NORM, cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION) == ("", False, "auto")


def _own_keys(path: Path) -> dict:
    """A config's keys and those of its _BASE_ chain inside configs/ (not Detectron2's files)."""
    raw = yaml.load(path.read_text(), Loader=_Loader)
    base = (path.parent / raw.pop("_BASE_", "")).resolve()
    if base.parent != CONFIGS or not base.is_file():
        return raw
    merged = _own_keys(base)

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(merged, raw)
    return merged


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_yaml_carries_its_own_input_format_and_nesterov(tmp_path, name):
    raw = _own_keys(CONFIGS / name)  # without Detectron2's Base-RetinaNet.yaml
    mgd = raw.get("MODEL", {}).get("META_ARCHITECTURE") in ("MGDRetinaNet", "MGDDetector")
    assert raw["INPUT"]["FORMAT"] == "RGB"  # torchvision weights take RGB
    assert isinstance(raw["SOLVER"]["NESTEROV"], bool)
    if mgd:
        assert raw["SOLVER"]["NESTEROV"] is True  # the original's optimizer
    cfg = load_cfg(tmp_path, name)
    assert (cfg.INPUT.FORMAT, cfg.SOLVER.NESTEROV) == ("RGB", raw["SOLVER"]["NESTEROV"])


@pytest.mark.parametrize("nesterov", [False, True])
def test_the_pins_optimizer_reads_nesterov(nesterov):
    cfg = add_mgd_config(get_cfg())
    cfg.SOLVER.NESTEROV = nesterov
    optimizer = build_optimizer(cfg, nn.Linear(2, 2))
    assert all(group["nesterov"] is nesterov for group in optimizer.param_groups)
