"""The pinned Detectron2 builds, trains and runs RetinaNet R18/R50 from this project's configs, and
loads torchvision ResNets converted by the pin's own converter with every backbone tensor matched."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2", reason="Detectron2 not built here (run `make detectron2`)")

import torchvision  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from conftest import CHECKOUT  # noqa: E402

CONFIG_DIR = CHECKOUT / "configs" / "COCO-Detection"
CONVERTER = CHECKOUT / "tools" / "convert-torchvision-to-d2.py"
# Residual blocks per stage, res2..res5.
BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


def build_retinanet(depth: int) -> torch.nn.Module:
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / f"retinanet_torchvision_R_{depth}_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def random_batch(num_images: int = 2, size: int = 96):
    generator = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, size, size), generator=generator, dtype=torch.uint8)
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.tensor([[8.0, 10.0, 60.0, 70.0], [30.0, 20.0, 90.0, 50.0]]))
        instances.gt_classes = torch.tensor([3, 17])
        batch.append({"image": image.float(), "instances": instances, "height": size, "width": size})
    return batch


@pytest.mark.parametrize("depth", [18, 50])
def test_config_sets_torchvision_conventions(depth):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIG_DIR / f"retinanet_torchvision_R_{depth}_FPN_1x.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    assert cfg.MODEL.RESNETS.DEPTH == depth
    assert cfg.INPUT.FORMAT == "RGB"
    assert not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert cfg.MODEL.PIXEL_MEAN == pytest.approx([123.675, 116.28, 103.53])
    assert cfg.MODEL.PIXEL_STD == pytest.approx([58.395, 57.12, 57.375])
    if depth == 18:
        assert cfg.MODEL.RESNETS.RES2_OUT_CHANNELS == 64


@pytest.mark.parametrize("depth", [18, 50])
def test_retinanet_trains_and_infers_on_cpu(depth):
    torch.manual_seed(0)
    model = build_retinanet(depth)
    model.train()
    with EventStorage(0):  # RetinaNet's training forward logs to the current event storage
        losses = model(random_batch())
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    head_grad = model.head.cls_score.weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"], "height": 96, "width": 96} for b in random_batch()])
    assert len(outputs) == 2
    for output in outputs:
        instances = output["instances"]
        assert instances.image_size == (96, 96)
        assert instances.pred_boxes.tensor.shape[1] == 4
        assert len(instances.scores) == len(instances.pred_classes)


@pytest.mark.parametrize("depth", [18, 50])
def test_converted_torchvision_weights_load_into_every_backbone_tensor(depth, tmp_path: Path):
    torch.manual_seed(depth)
    resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    with torch.no_grad():  # non-trivial running statistics, so FrozenBN has something to match
        for module in resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    torch.save(resnet.state_dict(), tmp_path / "resnet.pth")
    converted = tmp_path / f"r-{depth}.pkl"
    subprocess.run(
        [sys.executable, str(CONVERTER), str(tmp_path / "resnet.pth"), str(converted)],
        check=True, capture_output=True,
    )

    model = build_retinanet(depth)
    DetectionCheckpointer(model).load(str(converted))

    source = {name: tensor for name, tensor in resnet.state_dict().items() if "num_batches" not in name}
    bottom_up = model.backbone.bottom_up.state_dict()
    # conv weight + FrozenBN (weight, bias, running mean, running var) = 5 tensors per conv:
    # stem 1 conv, basic blocks 2, bottlenecks 3, plus a projection shortcut where channels change.
    convs_per_block, shortcuts = (2, 3) if depth == 18 else (3, 4)
    assert len(bottom_up) == 5 * (1 + sum(BLOCKS[depth]) * convs_per_block + shortcuts)  # 100 / 265
    # Every backbone tensor equals its torchvision source, found by the converter's naming rule.
    for d2_name, tensor in bottom_up.items():
        tv_name = _torchvision_name(d2_name)
        assert torch.equal(tensor, source[tv_name]), d2_name
    unused = set(source) - {_torchvision_name(n) for n in bottom_up}
    assert unused == {"fc.weight", "fc.bias"}

    # And the stage outputs equal torchvision's for the same input (both in eval mode).
    resnet.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        d2_outputs = model.backbone.bottom_up(image)
        x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(image))))
        assert set(d2_outputs) == {"res3", "res4", "res5"}  # RetinaNet's FPN inputs
        for stage in range(1, 5):
            x = getattr(resnet, f"layer{stage}")(x)
            if f"res{stage + 1}" in d2_outputs:
                torch.testing.assert_close(d2_outputs[f"res{stage + 1}"], x, rtol=1e-4, atol=1e-4)


def _torchvision_name(d2_name: str) -> str:
    """Invert the converter's renaming (written independently from its code)."""
    name = d2_name.replace("stem.", "").replace("shortcut.norm", "downsample.1")
    name = name.replace("shortcut", "downsample.0")
    for stage in range(2, 6):
        name = name.replace(f"res{stage}.", f"layer{stage - 1}.")
    for conv in range(1, 4):
        name = name.replace(f"conv{conv}.norm", f"bn{conv}")
    return name
