"""ResNet and ResNet-FPN backbones for MGD (RetinaNet's P3-P7, GeneralizedRCNN's P2-P6), added to Detectron2's BACKBONE_REGISTRY.

Built from upstream's own ResNet (``build_resnet_backbone``), so parameter names and shapes
are upstream's and every upstream/torchvision-converted checkpoint loads unchanged. Two
additions:

* **Taps.** With ``expose_taps = True`` the forward also returns, for each stage res2..res5,
  the output of its LAST block before the final ReLU (after the residual add), under the
  keys ``res2_prerelu`` ... ``res5_prerelu`` (``TAP_KEYS``). Stage outputs are then computed
  as ``relu(tap)``, numerically the same as upstream's in-place ReLU. With the flag off
  (the default) the forward is upstream's, untouched. FPN only reads the ``resN`` keys, so
  the extra keys pass through it unnoticed; the MGD meta-architecture picks them up with a
  forward hook on the bottom-up module during the network's one forward.
* **Stage-last norm.** ``MODEL.RESNETS.STAGE_LAST_NORM`` ("" = off, "GN", "naiveSyncBN" — the
  original's synchronised BN, ``mgd_norms`` —, or any :func:`detectron2.layers.get_norm` name) replaces every norm layer of the last block of
  each trainable stage (stage index > ``MODEL.BACKBONE.FREEZE_AT``). The new layers keep
  the attribute names (``convK.norm``) and the affine parameter shapes, so a FrozenBN
  checkpoint's ``weight``/``bias`` still load into them (its running statistics are unused).

``prerelu_norm(block)`` returns the norm layer right before a block's final ReLU
(``conv3.norm`` of a bottleneck, ``conv2.norm`` of a basic block): its affine (gamma, beta)
gives the teacher margins.
"""
import torch.nn.functional as F

from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling.backbone.build import BACKBONE_REGISTRY
from detectron2.modeling.backbone.mgd_norms import STAGE_LAST_NORMS
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import (
    BasicBlock,
    BottleneckBlock,
    ResNet,
    build_resnet_backbone,
)
from detectron2.utils.mgd_compat import resnet_stages

__all__ = [
    "MGDResNet",
    "TAP_KEYS",
    "tap_key",
    "prerelu_norm",
    "block_forward_prerelu",
    "apply_stage_last_norm",
    "build_mgd_resnet_backbone",
    "build_mgd_retinanet_resnet_fpn_backbone",
]

TAP_KEYS = ("res2_prerelu", "res3_prerelu", "res4_prerelu", "res5_prerelu")


def tap_key(stage_name: str) -> str:
    return f"{stage_name}_prerelu"


def _check_block(block):
    if type(block) not in (BasicBlock, BottleneckBlock):
        raise TypeError(
            f"MGD taps support upstream BasicBlock/BottleneckBlock only, got {type(block).__name__}"
        )


def block_forward_prerelu(block, x):
    """Upstream's block forward without the final ReLU: conv path + shortcut."""
    _check_block(block)
    out = F.relu_(block.conv1(x))
    if isinstance(block, BottleneckBlock):
        out = F.relu_(block.conv2(out))
        out = block.conv3(out)
    else:
        out = block.conv2(out)
    shortcut = x if block.shortcut is None else block.shortcut(x)
    return out + shortcut


def prerelu_norm(block):
    """The norm layer whose output feeds the block's final ReLU (through the residual add)."""
    _check_block(block)
    return block.conv3.norm if isinstance(block, BottleneckBlock) else block.conv2.norm


class MGDResNet(ResNet):
    """Upstream ResNet plus pre-ReLU taps of each stage's last block (see module doc)."""

    expose_taps = False

    @classmethod
    def from_resnet(cls, resnet: ResNet) -> "MGDResNet":
        """Adopt an upstream ResNet in place (same modules, same parameters)."""
        if type(resnet) is not ResNet:
            raise TypeError(f"expected an upstream ResNet, got {type(resnet).__name__}")
        if resnet.num_classes is not None:
            raise ValueError("MGD taps need a ResNet without the classification head")
        for stage, _ in resnet_stages(resnet):
            _check_block(stage[-1])
        resnet.__class__ = cls
        resnet.expose_taps = False
        return resnet

    def last_blocks(self):
        """{stage name: last block} for res2..res5 (those built)."""
        return {name: stage[-1] for stage, name in resnet_stages(self)}

    def tap_channels(self):
        """{tap key: channels} of the taps this network produces."""
        return {tap_key(n): self._out_feature_channels[n] for _, n in resnet_stages(self)}

    def forward(self, x):
        if not self.expose_taps:
            return super().forward(x)
        assert x.dim() == 4, f"ResNet takes an input of shape (N, C, H, W). Got {x.shape} instead!"
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for stage, name in resnet_stages(self):
            for block in stage[:-1]:
                x = block(x)
            tap = block_forward_prerelu(stage[-1], x)
            outputs[tap_key(name)] = tap
            x = F.relu(tap)
            if name in self._out_features:
                outputs[name] = x
        return outputs


def apply_stage_last_norm(resnet: ResNet, norm: str, freeze_at: int) -> int:
    """Replace every norm of the last block of each trainable stage by ``get_norm(norm, C)``.

    A stage ``resK`` is trainable when ``K > freeze_at`` (upstream's ``ResNet.freeze``).
    Returns how many norm layers were replaced.
    """
    replaced = 0
    for stage_idx, (stage, _) in enumerate(resnet_stages(resnet), start=2):
        if freeze_at >= stage_idx:
            continue
        block = stage[-1]
        for conv_name in ("conv1", "conv2", "conv3", "shortcut"):
            conv = getattr(block, conv_name, None)
            if conv is None or getattr(conv, "norm", None) is None:
                continue
            conv.norm = get_norm(STAGE_LAST_NORMS.get(norm, norm), conv.out_channels)
            replaced += 1
    return replaced


@BACKBONE_REGISTRY.register()
def build_mgd_resnet_backbone(cfg, input_shape: ShapeSpec):
    """Upstream ResNet from cfg, adopted as :class:`MGDResNet`, with the stage-last norm."""
    resnet = MGDResNet.from_resnet(build_resnet_backbone(cfg, input_shape))
    norm = cfg.MODEL.RESNETS.get("STAGE_LAST_NORM", "")
    if norm:
        apply_stage_last_norm(resnet, norm, cfg.MODEL.BACKBONE.FREEZE_AT)
    return resnet


@BACKBONE_REGISTRY.register()
def build_mgd_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Upstream's RetinaNet FPN (P3-P7, P6 from C5) on top of :func:`build_mgd_resnet_backbone`."""
    bottom_up = build_mgd_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_mgd_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Upstream's FPN of GeneralizedRCNN (P2-P6, P6 by max-pooling P5) on top of
    :func:`build_mgd_resnet_backbone`: the backbone of an MGD Faster / Mask R-CNN."""
    bottom_up = build_mgd_resnet_backbone(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
