"""ResNets pretrained on a generated classification task: the study's stand-in for ImageNet.

The paper's backbones start from ImageNet weights, which cannot be downloaded here. Both
networks of the study (the R50 teacher and every R18 student) start instead from torchvision
ResNets trained, the same way and on the same images, to classify generated images of one
shape: 6 kinds (circle, square, triangle, ring, cross, line) x 5 colour families (red, blue,
green, yellow, purple) = 30 classes, drawn as the detection set draws its objects (jittered
colour, shading, stripes, rotation, size) on its backgrounds, with pixel noise. Every sample
is a pure function of (seed, index), so training streams fresh images and never repeats one;
the held-out accuracy is measured on indices training never reaches.

Training: SGD with Nesterov momentum 0.9, weight decay 1e-4, a linear warm-up over the first
5 % of the steps then a cosine decay, BatchNorm in training mode (its statistics are what the
detection configs freeze), inputs normalised with torchvision's mean and std (the detection
configs' PIXEL_MEAN / PIXEL_STD, RGB), and the last BatchNorm of every residual branch starting
at zero (torchvision's ``zero_init_residual``: without it the R50 had not learnt the task after
150 steps, 5 % held-out accuracy).
"""
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .synthetic_coco import (DISTRACTOR_SHAPES, HUES, Placed, SynthConfig, _add_noise, _background, _paint,
                             _shape_sdf, make_shape)

__all__ = ["CLASSES", "PretrainConfig", "classification_sample", "classification_batch", "pretrain_resnet"]

#: (kind, colour) of each class
CLASSES = tuple((kind, colour) for kind in DISTRACTOR_SHAPES for colour in HUES)
#: torchvision's ImageNet normalisation (the configs' PIXEL_MEAN / PIXEL_STD), RGB, 0..255
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
#: index offset of the held-out samples (training never reaches it)
HELD_OUT = 10 ** 9


@dataclass(frozen=True)
class PretrainConfig:
    depth: int = 18
    steps: int = 400
    batch: int = 64
    size: int = 64
    lr: float = 0.1
    weight_decay: float = 1e-4
    seed: int = 0
    held_out: int = 1000


def classification_sample(seed: int, index: int, size: int) -> Tuple[np.ndarray, int]:
    """Sample ``index``: a uint8 [size, size, 3] image of one shape and its class (0..29)."""
    rng = np.random.default_rng([seed, 71, index])
    label = int(rng.integers(len(CLASSES)))
    kind, colour = CLASSES[label]
    cfg = SynthConfig(size=size, min_object=0.35 * size, max_object=0.8 * size)
    img = _background(rng, size)
    shape = make_shape(rng, cfg, kind, colour, None)
    shape.cx, shape.cy = (float(v) for v in size / 2 + rng.uniform(-0.15, 0.15, size=2) * size)
    sdf, window, full = _shape_sdf(shape, size)
    _paint(rng, cfg, img, [Placed(shape, sdf, window, full)])
    return _add_noise(rng, cfg, img), label


def classification_batch(seed: int, start: int, count: int, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Samples start .. start + count - 1, normalised: ([count, 3, size, size] float, [count] long)."""
    images, labels = zip(*(classification_sample(seed, start + i, size) for i in range(count)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, torch.tensor(labels)


def _learning_rate(cfg: PretrainConfig, step: int) -> float:
    warmup = max(1, cfg.steps // 20)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))


@torch.no_grad()
def held_out_accuracy(model: torch.nn.Module, cfg: PretrainConfig) -> float:
    model.eval()
    correct = 0
    for start in range(0, cfg.held_out, 100):
        x, y = classification_batch(cfg.seed, HELD_OUT + start, min(100, cfg.held_out - start), cfg.size)
        correct += int((model(x).argmax(1) == y).sum())
    model.train()
    return correct / cfg.held_out


def pretrain_resnet(cfg: PretrainConfig, progress: Optional[Callable[[str], None]] = None
                    ) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Train torchvision's ``resnet{depth}`` (30 outputs) on the generated classification task.

    Returns (its state dict, without the classifier ``fc.*``: a backbone as torchvision's
    released files are converted; a summary with the held-out accuracy and the time).
    """
    import torchvision

    builders = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34,
                50: torchvision.models.resnet50, 101: torchvision.models.resnet101}
    torch.manual_seed(cfg.seed)
    model = builders[cfg.depth](weights=None, num_classes=len(CLASSES), zero_init_residual=True)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr, momentum=0.9, nesterov=True)
    start, last_report, loss = time.perf_counter(), time.perf_counter(), float("nan")
    model.train()
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(cfg, step)
        x, y = classification_batch(cfg.seed, step * cfg.batch, cfg.batch, cfg.size)
        loss_t = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss_t.backward()
        optimizer.step()
        loss = loss_t.item()
        if progress and (time.perf_counter() - last_report > 30 or step == cfg.steps - 1):
            elapsed = time.perf_counter() - start
            progress(f"pretraining R{cfg.depth}: step {step + 1}/{cfg.steps}, loss {loss:.3f}, "
                     f"{elapsed:.0f} s elapsed, ETA {elapsed / (step + 1) * (cfg.steps - step - 1):.0f} s")
            last_report = time.perf_counter()
    accuracy = held_out_accuracy(model, cfg)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    summary = {**asdict(cfg), "classes": len(CLASSES), "final_loss": loss, "held_out_accuracy": accuracy,
               "seconds": round(time.perf_counter() - start, 1)}
    return state, summary
