"""Options and arithmetic against independent computations: ``MGD.PRERELU False`` distils the
ReLU of the taps, and the loss-factor probe's suggested factors put each loss at the target."""
import json
import re

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402

from mgd_reference import (  # noqa: E402
    distilled_names, divisor_for_one_process, hooked_taps, naive_position_losses, randomise_norms,
)
from d2_support import (  # noqa: E402
    TINY_INPUT, config_dir, import_overlay, load_cfg, make_synthetic_dataset, run_train_net, synthetic_batch,
)

import_overlay()

from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

MGD_DEMO = "demo_mgd_R50_R18.yaml"
STAGES_ONLY = ["MGD.IGNORE_INDS", "[3, 4, 5, 6, 7, 8]"]  # c2, c3, c4 (c5's solve is slow on CPU)


def test_prerelu_false_distils_the_relu_of_the_taps(tmp_path):
    torch.manual_seed(0)
    cfg = load_cfg(tmp_path, MGD_DEMO, STAGES_ONLY + ["MGD.PRERELU", "False"])
    model = build_model(cfg)
    randomise_norms(model.t_net, 1)
    randomise_norms(model.s_net, 2)
    model.eval()
    model.update_margins()
    model.reset_matching()
    model.accumulate_matching(synthetic_batch(2, seed=3))
    model.finish_matching()
    model.train()
    batch = synthetic_batch(2, seed=5)
    with EventStorage() as storage, torch.no_grad():
        ours = model(batch)["loss_distill"].item()
        logged = {k: v.latest() for k, v in storage.histories().items() if k.startswith("mgd/loss_")}

    names = distilled_names(cfg)
    divisor = divisor_for_one_process(cfg)
    assignments = model.distiller.assignments()
    reference = {}
    with torch.no_grad():
        for prerelu in (False, True):
            s_taps = hooked_taps(model.s_net, model.s_net.preprocess_image(batch).tensor, names, prerelu)
            t_taps = hooked_taps(model.t_net, model.t_net.preprocess_image(batch).tensor, names, prerelu)
            reference[prerelu] = naive_position_losses(model, cfg, s_taps, t_taps, assignments)
    relu_total = sum(v.item() for v in reference[False].values()) / divisor
    prerelu_total = sum(v.item() for v in reference[True].values()) / divisor
    assert ours == pytest.approx(relu_total, rel=1e-5)
    assert set(logged) == {f"mgd/loss_{n}" for n in names}
    for n in names:
        assert logged[f"mgd/loss_{n}"] == pytest.approx(reference[False][n].item() / divisor, rel=1e-5)
    # the option matters on this input: the pre-ReLU loss is another number
    # the option matters on this input: each position's pre-ReLU loss is another number
    # (by far more than the tolerance above)
    for n in names:
        relu, pre = reference[False][n].item(), reference[True][n].item()
        assert abs(pre - relu) > 1e-3 * relu, n
    assert ours != pytest.approx(prerelu_total, rel=1e-5)


# -- the loss-factor probe, through train_net.py ------------------------------------------------
PROBE_ROW = re.compile(r"^(c\d|p\d)\s+([-\d.e+]+)\s+([-\d.e+]+|nan|inf)\s+([-\d.e+]+)\s*$", re.M)
OVERRIDE = re.compile(r"^\s*(MGD\.LOSS_FACTORS \[[^\]\s]*\])\s*$", re.M)


PROBE_TARGET = 0.5  # far from every loss of the random model below


def _probe(cfg, opts, synth, output):
    proc = run_train_net(["--probe-loss-factors", "--probe-target", str(PROBE_TARGET), "--probe-matching-batches", "2",
                          "--probe-output", output, "--config-file", cfg, *opts], synth)
    rows = {name: (float(f), float(loss), float(s)) for name, f, loss, s in PROBE_ROW.findall(proc.stdout)}
    assert rows, "no probe table printed:\n" + proc.stdout[-3000:]
    overrides = OVERRIDE.findall(proc.stdout)
    assert len(overrides) == 1, proc.stdout[-3000:]
    return rows, overrides[0]


@pytest.mark.slow
def test_probe_suggested_factors_put_each_loss_at_the_target(tmp_path):
    synth = make_synthetic_dataset(tmp_path / "synth")
    cfg = config_dir(tmp_path) / MGD_DEMO
    torch.manual_seed(0)  # the probe needs weights: a random MGD model's, saved as a checkpoint
    model = build_model(load_cfg(tmp_path, MGD_DEMO, STAGES_ONLY))
    randomise_norms(model.t_net, 1)
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pth")
    opts = TINY_INPUT + STAGES_ONLY + ["SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", tmp_path / "probe",
                                       "MODEL.WEIGHTS", tmp_path / "weights.pth"]
    target = PROBE_TARGET
    before, line = _probe(cfg, opts, synth, tmp_path / "first.txt")
    assert set(before) == {"c2", "c3", "c4"}
    assert (tmp_path / "first.txt").read_text().strip() == line
    assert all(abs(loss / target - 1) > 0.1 for _, loss, _ in before.values()), before  # not there by chance

    key, value = line.split(" ", 1)
    factors = json.loads(value)
    assert len(factors) == 9 and factors[3:] == [5e6, 5e7, 5e7, 5e5, 0.0, 0.0]  # untouched positions
    after, _ = _probe(cfg, opts + [key, value], synth, tmp_path / "second.txt")
    assert set(after) == set(before)
    for name, (factor, loss, _) in after.items():
        assert factor == pytest.approx(factors[("c2", "c3", "c4").index(name)], rel=1e-6)
        # 4 significant digits in the override line, 5 in the printed loss
        assert loss == pytest.approx(target, rel=2e-3), name
