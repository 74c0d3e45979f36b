"""The fake-checkpoint builders of scripts_support agree with torchvision and Detectron2's
converter, and its hostile payloads really are dangerous (the guard of the refusal tests)."""
import pickle

import pytest

from scripts_support import (converted_student, convert_torchvision_key, d2_resnet_keys, malicious_checkpoint,
                             torchvision_resnet_keys)


def test_converter_rule_examples():
    assert convert_torchvision_key("conv1.weight") == "stem.conv1.weight"
    assert convert_torchvision_key("bn1.running_var") == "stem.conv1.norm.running_var"
    assert convert_torchvision_key("layer1.0.bn3.bias") == "res2.0.conv3.norm.bias"
    assert convert_torchvision_key("layer4.0.downsample.0.weight") == "res5.0.shortcut.weight"
    assert convert_torchvision_key("layer3.0.downsample.1.weight") == "res4.0.shortcut.norm.weight"
    assert convert_torchvision_key("fc.bias") == "stem.fc.bias"


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_key_names_match_real_models(depth):
    torchvision = pytest.importorskip("torchvision")
    with __import__("torch").device("meta"):
        model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert list(model.state_dict()) == torchvision_resnet_keys(depth)


@pytest.mark.parametrize("depth", [18, 50])
def test_converted_student_matches_detectron2_backbone_names(depth):
    # Every converted key but the classifier is a Detectron2 ResNet key (with BN counters).
    converted = set(converted_student(depth)["model"])
    d2 = {k for k in d2_resnet_keys(depth, prefix="")}
    extra = {k for k in converted - d2 if not k.endswith("num_batches_tracked")}
    assert extra == {"stem.fc.weight", "stem.fc.bias"}
    assert d2 <= converted


def test_payloads_really_are_dangerous(tmp_path):
    # Guard for the refusal tests: an ordinary pickle.loads of the payload creates the file.
    for kind in ("system", "open"):
        marker = tmp_path / f"pwned-{kind}"
        data = pickle.dumps(malicious_checkpoint(marker, kind), protocol=4)
        obj = pickle.loads(data)  # noqa: S301 - deliberately unsafe, on our own payload
        if hasattr(obj["model"]["res2.0.conv1.weight"], "close"):
            obj["model"]["res2.0.conv1.weight"].close()
        assert marker.exists()
