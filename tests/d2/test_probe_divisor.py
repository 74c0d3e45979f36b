"""The loss-factor probe divides by the distillation divisor training uses,
IMS_PER_BATCH * MGD.REFERENCE_WORLD_SIZE / world_size (IMS_PER_BATCH alone for 0), so its
suggested factors give the training loss they promise. Checked by the closed form: the same
weights, batches and matching with REFERENCE_WORLD_SIZE 8 and 0 on one process give losses
exactly 8 times apart (divisors 2 * 8 = 16 and 2)."""
import pytest

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from d2_support import (  # noqa: E402
    TINY_INPUT,
    import_overlay,
    load_cfg,
    make_synthetic_dataset,
    register_synthetic_dataset,
)

import_overlay()

from detectron2.engine.mgd_probe import probe_loss_factors  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

OPTS = TINY_INPUT + ["MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]", "SOLVER.IMS_PER_BATCH", "2", "DATASETS.TEST", "()"]


def test_probe_losses_scale_with_the_divisor(tmp_path, tmp_path_factory):
    # the session's shared set: its names (mgd_synth_*) can be registered once per process
    register_synthetic_dataset(make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_64"))
    torch.manual_seed(0)
    model = build_model(load_cfg(tmp_path, "demo_mgd_R50_R18.yaml", OPTS))
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pth")
    probed = {}
    for reference in (8, 0):
        cfg = load_cfg(tmp_path, "demo_mgd_R50_R18.yaml", OPTS + [
            "MODEL.WEIGHTS", str(tmp_path / "weights.pth"), "OUTPUT_DIR", str(tmp_path / "out"),
            "MGD.REFERENCE_WORLD_SIZE", str(reference)])
        cfg.freeze()
        seed_all_rng(1)  # the same batches in both runs
        probed[reference] = probe_loss_factors(cfg, iters=1, matching_batches=1)
    assert probed[8]["divisor"] == 16 and probed[0]["divisor"] == 2
    assert set(probed[8]["losses"]) == {"c2", "c3", "c4"}
    for name, loss in probed[8]["losses"].items():
        assert loss > 0
        assert probed[0]["losses"][name] == pytest.approx(8 * loss, rel=1e-5), name
        # and the suggestion puts f * loss / target: the factor that divides this loss to 0.02
        factor = load_cfg(tmp_path, "demo_mgd_R50_R18.yaml").MGD.LOSS_FACTORS[["c2", "c3", "c4"].index(name)]
        assert probed[8]["suggested"][["c2", "c3", "c4"].index(name)] == pytest.approx(factor * loss / 0.02)
