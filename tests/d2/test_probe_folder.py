"""The loss-factor probe writes its config.yaml and log.txt into its own folder:
OUTPUT_DIR/probe when OUTPUT_DIR is not given (./output/probe by default), never ./output itself; an OUTPUT_DIR given on the command line is used as it is."""
import pytest

from d2_support import TINY_INPUT, config_dir, import_overlay, load_cfg, make_synthetic_dataset, run_train_net

pytestmark = [pytest.mark.detectron2, pytest.mark.slow]
pytest.importorskip("detectron2.modeling", reason="pinned Detectron2 not importable (run `make detectron2`)")

OPTS = TINY_INPUT + ["MGD.IGNORE_INDS", "[2, 3, 4, 5, 6, 7, 8]", "SOLVER.IMS_PER_BATCH", "2"]


def test_the_probe_writes_into_output_probe(tmp_path, tmp_path_factory):
    import torch

    import_overlay()
    from detectron2.modeling import build_model

    synth = make_synthetic_dataset(tmp_path_factory.getbasetemp() / "mgd_synth_64")
    torch.manual_seed(0)
    torch.save({"model": build_model(load_cfg(tmp_path, "demo_mgd_R50_R18.yaml", OPTS)).state_dict()},
               tmp_path / "weights.pth")
    work = tmp_path / "work"
    work.mkdir()
    probe = ["--probe-loss-factors", "--probe-matching-batches", "1", "--config-file",
             config_dir(tmp_path) / "demo_mgd_R50_R18.yaml", *OPTS, "MODEL.WEIGHTS", tmp_path / "weights.pth"]
    proc = run_train_net(probe, synth, cwd=work)
    assert "MGD loss-factor probe" in proc.stdout
    assert sorted(p.name for p in (work / "output").iterdir()) == ["probe"]
    assert {"config.yaml", "log.txt"} <= {p.name for p in (work / "output" / "probe").iterdir()}

    run_train_net([*probe, "OUTPUT_DIR", work / "mine"], synth, cwd=work)  # as given
    assert (work / "mine" / "config.yaml").exists() and not (work / "mine" / "probe").exists()
