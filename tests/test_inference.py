"""Sliding-window inference: windows, blending and the one-window case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from inference import gaussian_weight, predict_probs, probs_to_labels, window_starts
from model import UNet3D
from params import ModelParams


def tiny_unet() -> nn.Module:
    torch.manual_seed(0)
    return UNet3D(ModelParams(base_width=4, max_width=8, depth=3, norm="instance", deep_supervision=True)).eval()


def pointwise() -> nn.Module:
    """A 1×1×1 convolution: its output at a voxel depends on that voxel only."""
    torch.manual_seed(0)
    return nn.Conv3d(4, 4, 1)


def test_window_starts_by_hand():
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(4, 4, 0.5) == [0]
    assert window_starts(3, 4, 0.5) == [0]
    assert window_starts(11, 4, 0.5) == [0, 2, 4, 5, 7]      # ceil(7/2)+1 = 5 windows, evenly spread
    assert window_starts(10, 4, 0.0) == [0, 3, 6]


def test_gaussian_weight_peaks_in_the_middle():
    w = gaussian_weight((8, 8, 8))
    assert w.max() == 1 and (w > 0).all()
    assert w[3, 3, 3] == w[4, 4, 4] > w[0, 0, 0]
    assert torch.allclose(w, w.flip(0)) and torch.allclose(w, w.permute(1, 0, 2))


def test_one_window_is_exactly_a_plain_forward_pass():
    model = tiny_unet()
    x = torch.randn(4, 16, 16, 16)
    with torch.no_grad():
        expected = torch.sigmoid(model(x[None]))[0]
    assert torch.equal(predict_probs(model, x, (16, 16, 16)), expected)


def test_small_case_is_padded_and_cropped_back():
    model = tiny_unet()
    x = torch.randn(4, 11, 13, 16)
    padded = torch.nn.functional.pad(x, [0, 0, 0, 3, 0, 5])
    with torch.no_grad():
        expected = torch.sigmoid(model(padded[None]))[0, :, :11, :13, :16]
    assert torch.equal(predict_probs(model, x, (16, 16, 16)), expected)


@pytest.mark.parametrize("overlap, batch", [(0.5, 1), (0.5, 3), (0.25, 2)])
def test_blending_is_a_weighted_mean(overlap, batch):
    # with a pointwise model every window predicts the same value at a voxel: the blend must give it back
    model = pointwise()
    x = torch.randn(4, 21, 18, 25)
    with torch.no_grad():
        expected = torch.sigmoid(model(x[None]))[0]
    got = predict_probs(model, x, (8, 8, 8), overlap=overlap, batch=batch)
    assert torch.allclose(got, expected, atol=1e-6)


def test_mirroring_of_a_flip_invariant_model_changes_nothing():
    model = pointwise()
    x = torch.randn(4, 12, 12, 12)
    plain = predict_probs(model, x, (8, 8, 8))
    assert torch.allclose(predict_probs(model, x, (8, 8, 8), mirror=True), plain, atol=1e-6)


def test_memmap_input_and_labels(tmp_path):
    path = tmp_path / "image.npy"
    np.save(path, np.random.default_rng(0).standard_normal((4, 9, 9, 9)).astype(np.float32))
    probs = predict_probs(tiny_unet(), np.load(path, mmap_mode="r"), (8, 8, 8))
    labels = probs_to_labels(probs)
    assert probs.shape == (4, 9, 9, 9) and labels.shape == (9, 9, 9) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
