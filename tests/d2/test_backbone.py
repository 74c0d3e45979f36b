"""The MGD ResNet/FPN backbone: upstream's parameters and outputs, plus pre-ReLU taps."""
import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="Detectron2 not built here (run `make detectron2`)")
# the checkout folder alone is an empty namespace package "detectron2": need the real one
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from d2_support import import_overlay, load_cfg  # noqa: E402

import_overlay()

from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling.backbone.fpn import build_retinanet_resnet_fpn_backbone  # noqa: E402
from detectron2.modeling.backbone.mgd_resnet import (  # noqa: E402
    MGDResNet,
    build_mgd_retinanet_resnet_fpn_backbone,
    prerelu_norm,
)
from detectron2.utils.mgd_compat import resnet_stages  # noqa: E402

CONFIGS = {18: "retinanet_torchvision_R_18_FPN_1x.yaml", 50: "retinanet_torchvision_R_50_FPN_1x.yaml"}


def _pair(tmp_path, depth, opts=()):
    cfg = load_cfg(tmp_path, CONFIGS[depth], opts)
    shape = ShapeSpec(channels=3)
    torch.manual_seed(0)
    upstream = build_retinanet_resnet_fpn_backbone(cfg, shape)
    ours = build_mgd_retinanet_resnet_fpn_backbone(cfg, shape)
    return cfg, upstream, ours


def _shapes(module, params_only=False):
    items = module.named_parameters() if params_only else module.state_dict().items()
    return {k: tuple(v.shape) for k, v in items}


@pytest.mark.parametrize("depth", [18, 50])
def test_state_dict_names_and_shapes_equal_upstream(tmp_path, depth):
    _, upstream, ours = _pair(tmp_path, depth)
    assert isinstance(ours.bottom_up, MGDResNet)
    assert _shapes(ours) == _shapes(upstream)
    assert [n for n, p in ours.named_parameters() if p.requires_grad] == \
        [n for n, p in upstream.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("depth", [18, 50])
def test_stage_last_norm_keeps_parameter_names_and_shapes(tmp_path, depth):
    _, upstream, ours = _pair(tmp_path, depth, ["MODEL.RESNETS.STAGE_LAST_NORM", "GN",
                                                "MODEL.BACKBONE.FREEZE_AT", "1"])
    ours_shapes, upstream_shapes = _shapes(ours), _shapes(upstream)
    # same names and shapes; only the replaced FrozenBNs' running statistics are gone
    assert ours_shapes.items() <= upstream_shapes.items()
    dropped = set(upstream_shapes) - set(ours_shapes)
    assert dropped and all(k.endswith(("running_mean", "running_var")) for k in dropped)
    # every norm of the last block of res2..res5 is GN and trainable; the others are FrozenBN
    blocks = ours.bottom_up.last_blocks()
    assert list(blocks) == ["res2", "res3", "res4", "res5"]
    for name, block in blocks.items():
        norms = [m for m in block.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert len(norms) == (3 if depth == 50 else 2) + (block.shortcut is not None)
        assert all(p.requires_grad for m in norms for p in m.parameters())
    assert type(ours.bottom_up.res2[0].conv1.norm).__name__ == "FrozenBatchNorm2d"
    assert type(ours.bottom_up.stem.conv1.norm).__name__ == "FrozenBatchNorm2d"


def test_stage_last_norm_only_on_trainable_stages(tmp_path):
    _, _, ours = _pair(tmp_path, 18, ["MODEL.RESNETS.STAGE_LAST_NORM", "GN", "MODEL.BACKBONE.FREEZE_AT", "3"])
    kinds = {n: type(prerelu_norm(b)).__name__ for n, b in ours.bottom_up.last_blocks().items()}
    assert kinds == {"res2": "FrozenBatchNorm2d", "res3": "FrozenBatchNorm2d",
                     "res4": "GroupNorm", "res5": "GroupNorm"}


@pytest.mark.parametrize("depth", [18, 50])
def test_outputs_equal_upstream_and_taps_are_prerelu(tmp_path, depth):
    _, upstream, ours = _pair(tmp_path, depth)
    # random non-trivial norms so the residual sums have both signs
    gen = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(v.shape, generator=gen) * 0.5 + (1.0 if k.endswith("running_var") else 0.0)).abs()
             if k.endswith("running_var") else torch.randn(v.shape, generator=gen) * 0.1
             for k, v in upstream.state_dict().items()}
    upstream.load_state_dict(state)
    ours.load_state_dict(state)
    upstream.eval(), ours.eval()
    x = torch.randn(2, 3, 64, 96, generator=gen)
    with torch.no_grad():
        ref = upstream(x)
        plain = ours(x)
        ours.bottom_up.expose_taps = True
        tapped = ours(x)
        bottom = ours.bottom_up(x)
        ours.bottom_up.expose_taps = False
        ref_bottom = upstream.bottom_up(x)
    assert list(plain) == list(ref) == list(tapped)
    for k in ref:
        assert torch.equal(plain[k], ref[k]), k
        assert torch.equal(tapped[k], ref[k]), k
    for stage in ("res3", "res4", "res5"):
        assert torch.equal(bottom[stage], ref_bottom[stage])
    for stage in ("res2", "res3", "res4", "res5"):
        tap = bottom[f"{stage}_prerelu"]
        assert (tap < 0).any(), "taps must be taken before the final ReLU"
        if stage != "res2":
            assert torch.equal(F.relu(tap), ref_bottom[stage])


def test_taps_match_a_hook_reference_on_upstream_blocks(tmp_path):
    """The tap equals conv path + shortcut of upstream's own last-block forward (hooks)."""
    _, upstream, ours = _pair(tmp_path, 50)
    ours.load_state_dict(upstream.state_dict())
    x = torch.randn(1, 3, 64, 64)
    captured = {}

    def keep(name):
        return lambda m, i, o: captured.__setitem__(name, o.clone())

    handles = []
    stages = {n: s for s, n in resnet_stages(upstream.bottom_up)}
    for stage, block in ((n, s[-1]) for n, s in stages.items()):
        handles.append(block.conv3.register_forward_hook(keep(stage + "/conv3")))
        handles.append(block.register_forward_pre_hook(
            lambda m, i, stage=stage: captured.__setitem__(stage + "/in", i[0].clone())))
    with torch.no_grad():
        upstream.bottom_up(x)
        ours.bottom_up.expose_taps = True
        taps = ours.bottom_up(x)
    for h in handles:
        h.remove()
    for stage in ("res2", "res3", "res4", "res5"):
        block = stages[stage][-1]
        shortcut = captured[stage + "/in"] if block.shortcut is None else block.shortcut(captured[stage + "/in"])
        torch.testing.assert_close(taps[f"{stage}_prerelu"], captured[stage + "/conv3"] + shortcut)
