"""A real merged checkpoint: a RetinaNet-R50 training checkpoint and a converted torchvision R18,
merged by scripts/merge-models-into-one.py, load into MGDRetinaNet through the project's
checkpointer with exactly the expected tensors missing, and the teacher's equal to its source."""
import math
import pickle
import subprocess
import sys

import pytest

pytestmark = pytest.mark.detectron2
pytest.importorskip("detectron2.modeling", reason="Detectron2 not importable (run `make detectron2`)")

import torch  # noqa: E402
import torchvision  # noqa: E402

from d2_support import CHECKOUT, REPO, import_overlay, load_cfg  # noqa: E402

import_overlay()

from detectron2.engine.mgd_trainer import MGDCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

TEACHER_PREFIX, STUDENT_PREFIX = "t_net.", "s_net."
STUDENT_BOTTOM_UP = "s_net.backbone.bottom_up."


def _randomise(tensors, seed):
    """Every float tensor gets new values (norm statistics included), so "equal to the source"
    can only hold for tensors that were really loaded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in tensors.items():
            if "running_var" in name:
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)


def _teacher_checkpoint(tmp_path):
    """RetinaNet(cfg).state_dict() of the R50 config, saved as a training checkpoint."""
    torch.manual_seed(50)
    model = build_model(load_cfg(tmp_path, "retinanet_torchvision_R_50_FPN_1x.yaml"))
    assert type(model).__name__ == "RetinaNet" and model.backbone.bottom_up.__class__.__name__ == "ResNet"
    state = model.state_dict()
    _randomise({k: v for k, v in state.items() if k.startswith(("backbone.", "head."))}, 1)
    path = tmp_path / "teacher_model_final.pth"
    torch.save({"model": state, "iteration": 89999}, path)
    return path, {k: v.clone() for k, v in state.items()}


def _converted_student(tmp_path):
    """torchvision's resnet18 (random weights and statistics) through the pin's converter."""
    torch.manual_seed(18)
    resnet = torchvision.models.resnet18(weights=None)
    _randomise(resnet.state_dict(), 2)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    converted = tmp_path / "r-18.pkl"
    subprocess.run([sys.executable, str(CHECKOUT / "tools" / "convert-torchvision-to-d2.py"),
                    str(tmp_path / "resnet18.pth"), str(converted)], check=True, capture_output=True)
    with open(converted, "rb") as f:  # our own file, just written by the pin's converter
        return converted, pickle.load(f)["model"]


def test_merged_r50_r18_loads_with_exactly_the_expected_missing_keys(tmp_path):
    teacher_path, teacher = _teacher_checkpoint(tmp_path)
    student_path, student = _converted_student(tmp_path)
    merged = tmp_path / "T50-S18.pkl"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "merge-models-into-one.py"),
                           str(teacher_path), str(student_path), str(merged)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    model = build_model(load_cfg(tmp_path, "mgd_retinanet_R50_R18_FPN_1x.yaml"))
    state = model.state_dict()
    assert all(t.is_floating_point() for t in state.values())
    with torch.no_grad():  # what loading does not write stays NaN
        for t in state.values():
            t.fill_(math.nan)
    MGDCheckpointer(model).resume_or_load(str(merged), resume=False)

    state = model.state_dict()
    untouched = {k for k, t in state.items() if torch.isnan(t).all()}
    written = {k for k, t in state.items() if not torch.isnan(t).any()}
    assert untouched | written == set(state), sorted(set(state) - untouched - written)
    # missing: the student's FPN, head and buffers (everything outside its bottom-up ResNet)
    # and the distiller's norms; by prefix, from the model's own key names
    expected_missing = {k for k in state if k.startswith("distiller.")
                        or (k.startswith(STUDENT_PREFIX) and not k.startswith(STUDENT_BOTTOM_UP))}
    assert any(k.startswith("distiller.student_norms.") for k in expected_missing)
    assert any(k.startswith("s_net.backbone.fpn_") for k in expected_missing)
    assert any(k.startswith("s_net.head.") for k in expected_missing)
    assert untouched == expected_missing

    # the teacher: exactly the R50 RetinaNet's keys, every tensor equal to its source
    teacher_keys = {k for k in state if k.startswith(TEACHER_PREFIX)}
    assert teacher_keys == {TEACHER_PREFIX + k for k in teacher}
    for k, source in teacher.items():
        assert torch.equal(state[TEACHER_PREFIX + k], source), k
    # the student's ResNet: every tensor equal to the converted torchvision one
    bottom_up = {k[len(STUDENT_BOTTOM_UP):] for k in state if k.startswith(STUDENT_BOTTOM_UP)}
    assert bottom_up and bottom_up <= set(student)
    for k in bottom_up:
        assert torch.equal(state[STUDENT_BOTTOM_UP + k], torch.as_tensor(student[k])), k
