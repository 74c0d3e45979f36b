"""The study's stand-in for ImageNet: the generated classification task and its schedule."""
import math

import numpy as np
import pytest
import torch

from mgd_tools import pretrain
from mgd_tools.pretrain import CLASSES, HELD_OUT, PretrainConfig, classification_batch, classification_sample


def test_a_sample_is_a_function_of_seed_and_index():
    a, la = classification_sample(0, 5, 32)
    b, lb = classification_sample(0, 5, 32)
    c, _ = classification_sample(0, 6, 32)
    d, _ = classification_sample(1, 5, 32)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b) and la == lb
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_the_classes_are_every_shape_colour_pair_and_all_are_drawn():
    assert len(CLASSES) == len(set(CLASSES)) == 30
    labels = {classification_sample(0, i, 16)[1] for i in range(400)}
    assert labels == set(range(30))  # P(a class missing in 400 draws) < 30 * (29/30)^400 ~ 4e-5


def test_the_shape_is_drawn_where_the_image_differs_from_its_background():
    """The object sits near the centre: the centre region differs from the corners' colours."""
    img, _ = classification_sample(0, 3, 48)
    centre = img[18:30, 18:30].astype(float).mean(axis=(0, 1))
    corners = np.concatenate([img[:6, :6], img[-6:, -6:]]).astype(float).mean(axis=(0, 1))
    assert np.abs(centre - corners).max() > 10


def test_a_batch_is_normalised_as_the_detection_configs_expect():
    x, y = classification_batch(0, 0, 4, 24)
    assert x.shape == (4, 3, 24, 24) and y.dtype == torch.long and y.shape == (4,)
    raw = classification_sample(0, 2, 24)[0].astype(np.float32)
    expected = (raw - np.array(pretrain.MEAN, dtype=np.float32)) / np.array(pretrain.STD, dtype=np.float32)
    assert torch.allclose(x[2], torch.from_numpy(expected).permute(2, 0, 1), atol=1e-5)


def test_held_out_samples_are_never_trained_on():
    cfg = PretrainConfig(steps=10 ** 6, batch=512)
    assert cfg.steps * cfg.batch < HELD_OUT


@pytest.mark.parametrize("step, expected", [
    (0, 0.1 / 5), (4, 0.1), (5, 0.1),  # warm-up: 100 // 20 = 5 steps, linear to the base lr
    (52, 0.05 * (1 + math.cos(math.pi * 47 / 95))),  # then cosine over the 95 steps left
    (99, 0.05 * (1 + math.cos(math.pi * 94 / 95)))])
def test_learning_rate_warms_up_linearly_then_follows_a_cosine(step, expected):
    assert pretrain._learning_rate(PretrainConfig(steps=100, lr=0.1), step) == pytest.approx(expected)
