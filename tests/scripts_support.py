"""Builders of fake checkpoints for the checkpoint-script tests (no torch, no Detectron2).

The converted student reproduces, independently, the key renaming that Detectron2's
``tools/convert-torchvision-to-d2.py`` applies to a torchvision ResNet state dict (at the
pinned commit): keys without ``layer`` get a ``stem.`` prefix, ``layerN`` -> ``res{N+1}``,
``bnK`` -> ``convK.norm``, ``downsample.0`` -> ``shortcut``, ``downsample.1`` ->
``shortcut.norm``; values become numpy arrays; the wrapper is
``{"model": ..., "__author__": "torchvision", "matching_heuristics": True}``.
tests/scripts/test_support_builders.py checks these builders against torchvision's real key names.
"""

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def load_file(path: Path):
    """Import a file that is not in a package (a script, possibly hyphenated; a benchmark) as a
    module of its own name, without putting its folder on ``sys.path``."""
    name = Path(path).stem.replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LAYOUTS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False),
           50: ((3, 4, 6, 3), True), 101: ((3, 4, 23, 3), True)}
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
FROZEN_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


def torchvision_resnet_keys(depth):
    """The state-dict key names of ``torchvision.models.resnet{depth}()``, in order."""
    blocks, bottleneck = LAYOUTS[depth]
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in BN_SUFFIXES]
    nconv = 3 if bottleneck else 2
    for stage, n in enumerate(blocks, start=1):
        for b in range(n):
            pre = f"layer{stage}.{b}."
            for c in range(1, nconv + 1):
                keys.append(pre + f"conv{c}.weight")
                keys += [pre + f"bn{c}.{s}" for s in BN_SUFFIXES]
            if b == 0 and (stage > 1 or bottleneck):
                keys.append(pre + "downsample.0.weight")
                keys += [pre + f"downsample.1.{s}" for s in BN_SUFFIXES]
    keys += ["fc.weight", "fc.bias"]
    return keys


def convert_torchvision_key(k):
    """Detectron2's convert-torchvision-to-d2.py renaming rule, reimplemented."""
    if "layer" not in k:
        k = "stem." + k
    for t in (1, 2, 3, 4):
        k = k.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        k = k.replace(f"bn{t}", f"conv{t}.norm")
    k = k.replace("downsample.0", "shortcut")
    return k.replace("downsample.1", "shortcut.norm")


def _value(rng, key, i):
    if key.endswith("num_batches_tracked"):
        return np.array(i, dtype=np.int64)
    return rng.standard_normal(3 + i % 4).astype(np.float32)


def converted_student(depth=18, seed=0):
    """A dict like the pickle convert-torchvision-to-d2.py writes (tiny random arrays)."""
    rng = np.random.default_rng(seed)
    model = {convert_torchvision_key(k): _value(rng, k, i)
             for i, k in enumerate(torchvision_resnet_keys(depth))}
    return {"model": model, "__author__": "torchvision", "matching_heuristics": True}


def d2_resnet_keys(depth, prefix="backbone.bottom_up."):
    """Detectron2 ResNet backbone key names (FrozenBN norms) under ``prefix``."""
    blocks, bottleneck = LAYOUTS[depth]
    keys = [prefix + "stem.conv1.weight"] + [prefix + f"stem.conv1.norm.{s}"
                                             for s in FROZEN_BN_SUFFIXES]
    nconv = 3 if bottleneck else 2
    for stage, n in enumerate(blocks, start=2):
        for b in range(n):
            pre = f"{prefix}res{stage}.{b}."
            if b == 0 and (stage > 2 or bottleneck):
                keys.append(pre + "shortcut.weight")
                keys += [pre + f"shortcut.norm.{s}" for s in FROZEN_BN_SUFFIXES]
            for c in range(1, nconv + 1):
                keys.append(pre + f"conv{c}.weight")
                keys += [pre + f"conv{c}.norm.{s}" for s in FROZEN_BN_SUFFIXES]
    return keys


def retinanet_state_dict(depth=50, seed=1):
    """A Detectron2 RetinaNet-like state dict (names as at the pin; tiny random arrays)."""
    rng = np.random.default_rng(seed)
    keys = ["pixel_mean", "pixel_std"] + d2_resnet_keys(depth)
    for lvl in (3, 4, 5):
        for part in ("lateral", "output"):
            keys += [f"backbone.fpn_{part}{lvl}.weight", f"backbone.fpn_{part}{lvl}.bias"]
    keys += ["backbone.top_block.p6.weight", "backbone.top_block.p6.bias",
             "backbone.top_block.p7.weight", "backbone.top_block.p7.bias"]
    for sub in ("cls_subnet", "bbox_subnet"):
        for i in (0, 2, 4, 6):
            keys += [f"head.{sub}.{i}.weight", f"head.{sub}.{i}.bias"]
    keys += ["head.cls_score.weight", "head.cls_score.bias",
             "head.bbox_pred.weight", "head.bbox_pred.bias"]
    return {k: rng.standard_normal(2 + i % 5).astype(np.float32) for i, k in enumerate(keys)}


def rcnn_state_dict(depth=50, mask=False, seed=1):
    """A Detectron2 Faster (``mask``: Mask) R-CNN-FPN-like state dict (the names of the pin's
    GeneralizedRCNN: tests/d2/test_mgd_checkpoint_kinds.py checks them; tiny random arrays)."""
    rng = np.random.default_rng(seed)
    keys = ["pixel_mean", "pixel_std"] + d2_resnet_keys(depth)
    for lvl in (2, 3, 4, 5):
        for part in ("lateral", "output"):
            keys += [f"backbone.fpn_{part}{lvl}.weight", f"backbone.fpn_{part}{lvl}.bias"]
    for part in ("conv", "objectness_logits", "anchor_deltas"):
        keys += [f"proposal_generator.rpn_head.{part}.weight", f"proposal_generator.rpn_head.{part}.bias"]
    keys += [f"proposal_generator.anchor_generator.cell_anchors.{i}" for i in range(5)]
    for part in ("box_head.fc1", "box_head.fc2", "box_predictor.cls_score", "box_predictor.bbox_pred"):
        keys += [f"roi_heads.{part}.weight", f"roi_heads.{part}.bias"]
    if mask:
        for part in ("mask_fcn1", "mask_fcn2", "mask_fcn3", "mask_fcn4", "deconv", "predictor"):
            keys += [f"roi_heads.mask_head.{part}.weight", f"roi_heads.mask_head.{part}.bias"]
    return {k: rng.standard_normal(2 + i % 5).astype(np.float32) for i, k in enumerate(keys)}


def d2_pickle(model, author="Detectron2"):
    return {"model": model, "__author__": author, "matching_heuristics": True}


def write_pickle(path, obj, protocol=4):
    Path(path).write_bytes(pickle.dumps(obj, protocol=protocol))
    return Path(path)


def run_script(name, *args, cwd=None, timeout=120):
    """Run ``scripts/<name>`` with this interpreter; returns the CompletedProcess."""
    launcher = ["bash"] if name.endswith(".sh") else [sys.executable]
    cmd = [*launcher, str(SCRIPTS / name), *map(str, args)]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHON=sys.executable)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env)


def assert_one_line_error(proc):
    """Non-zero exit, exactly one ``error: ...`` line on stderr."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# ---- hostile inputs -----------------------------------------------------------------------

class SystemPayload:
    """Unpickling this runs ``os.system(command)`` (with an unrestricted unpickler)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class OpenPayload:
    """Unpickling this runs ``open(path, "w")``, creating the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_checkpoint(marker, kind="system"):
    """A Detectron2-looking checkpoint whose unpickling would create ``marker``."""
    payload = SystemPayload(f"touch {marker}") if kind == "system" else OpenPayload(marker)
    model = converted_student(18)["model"]
    model["res2.0.conv1.weight"] = payload
    return {"model": model, "__author__": "torchvision", "matching_heuristics": True}


def run_make(*args, cwd=REPO, env=None, timeout=600, merged=True) -> subprocess.CompletedProcess:
    """``make -C <repo> ARGS`` in a subprocess, with this interpreter (PYTHON) and the Detectron2
    target under test passed through (DETECTRON2, DETECTRON2_DIR: the checkout this session
    tests, tests/conftest.py), so a test of a make target never builds or uses another one.
    Text output; ``merged``: stderr into stdout (the order a user sees), else apart."""
    from mgd.bootstrap import detectron2_checkout

    target = os.environ.get("DETECTRON2", "pin")
    checkout = os.environ.get("DETECTRON2_DIR") or detectron2_checkout(str(REPO))
    cmd = ["make", "--no-print-directory", "-C", str(REPO), *map(str, args), f"PYTHON={sys.executable}",
           f"DETECTRON2={target}", f"DETECTRON2_DIR={checkout}"]
    streams = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT) if merged else dict(capture_output=True)
    return subprocess.run(cmd, cwd=cwd, env=env, text=True, timeout=timeout, **streams)


def assert_refused(proc, message: str, *never_written: Path) -> str:
    """One ``error:`` line containing ``message`` in the first 30 lines, exit code 2, no
    traceback, and none of ``never_written`` exists. Returns the error line."""
    lines = proc.stdout.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert proc.returncode == 2, proc.stdout[-3000:]
    assert len(errors) == 1, proc.stdout[-3000:]
    assert message in errors[0], errors[0]
    assert lines.index(errors[0]) < 30, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
    for path in never_written:
        assert not path.exists(), f"{path} was written by a refused run"
    return errors[0]


def read_d2(path):
    """The model of a Detectron2 pickle as the converters write it (checked), read as data."""
    import mgd.checkpoint as cio

    obj = cio.load_checkpoint_object(path)
    assert set(obj) == {"model", "__author__", "matching_heuristics"}
    assert obj["__author__"] == "TORCHVISION" and obj["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) for v in obj["model"].values())
    return obj["model"]
