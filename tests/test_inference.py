"""Sliding-window inference: windows, blending and the one-window case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from inference import gaussian_weight, predict_probs, probs_to_labels, window_starts
from model import UNet3D
from params import ModelParams
from runtime import Compiled, memory_format


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
    with torch.no_grad():   # in the device's layout, as predict_probs runs the network
        expected = torch.sigmoid(model(x[None].contiguous(memory_format=memory_format("cpu"))))[0]
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


def test_float16_input_and_labels():
    image = np.random.default_rng(0).standard_normal((4, 9, 9, 9)).astype(np.float16)  # as stored
    model = tiny_unet()
    probs = predict_probs(model, image, (8, 8, 8))
    assert torch.equal(probs, predict_probs(model, torch.from_numpy(image.astype(np.float32)), (8, 8, 8)))
    labels = probs_to_labels(probs)
    assert probs.shape == (4, 9, 9, 9) and labels.shape == (9, 9, 9) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}


def reference_sliding_window(model: nn.Module, x: torch.Tensor, patch: tuple[int, int, int], overlap: float,
                             mirror: bool) -> np.ndarray:
    """An independent, slow sliding window: one window and one flip per forward pass, blended in
    float64 numpy on the host, nothing batched."""
    starts = [window_starts(s, p, overlap) for s, p in zip(x.shape[1:], patch)]
    weight = gaussian_weight(patch).double().numpy()
    out = np.zeros((4, *x.shape[1:]))
    norm = np.zeros(x.shape[1:])
    flips = [()] + [(a,) for a in (1, 2, 3)] + [(1, 2), (1, 3), (2, 3), (1, 2, 3)] if mirror else [()]
    for a in starts[0]:
        for b in starts[1]:
            for c in starts[2]:
                window = x[:, a:a + patch[0], b:b + patch[1], c:c + patch[2]]
                probs = np.zeros((4, *patch))
                for dims in flips:
                    with torch.no_grad():
                        logits = model(window.flip(dims)[None])[0] if dims else model(window[None])[0]
                    probs += torch.sigmoid(logits.flip(dims) if dims else logits).double().numpy()
                region = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
                out[(slice(None), *region)] += probs / len(flips) * weight
                norm[region] += weight
    head = (x != 0).any(dim=0).numpy()
    return out / norm * head


@pytest.mark.parametrize("mirror, batch, batch_flips", [(False, 1, None), (False, 3, None), (True, 2, False),
                                                       (True, 2, True)])
def test_batched_windows_and_flips_agree_with_one_at_a_time(mirror, batch, batch_flips):
    model = tiny_unet()
    x = torch.randn(4, 19, 17, 22)
    x[:, :2] = 0                                                # some voxels outside the head
    got = predict_probs(model, x, (8, 8, 8), overlap=0.5, batch=batch, mirror=mirror, batch_flips=batch_flips)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    np.testing.assert_allclose(got.numpy(), reference_sliding_window(model, x, (8, 8, 8), 0.5, mirror),
                               atol=1e-5)
    assert not got[:, :2].any()


@pytest.mark.slow
def test_compiled_network_predicts_what_the_eager_one_does():
    """evaluate.compile / predict --compile: the same probabilities as the eager network (to float
    rounding), the same bytes on a second run, and a short last batch of windows filled (80 windows
    in batches of 3) instead of a second compilation."""
    model = tiny_unet()
    x = torch.randn(4, 19, 17, 22)
    x[:, :2] = 0
    eager = predict_probs(model, x, (8, 8, 8), overlap=0.5, batch=3, mirror=True)
    torch._dynamo.utils.counters.clear()
    compiled = Compiled(model, "evaluate.compile")
    first = predict_probs(compiled, x, (8, 8, 8), overlap=0.5, batch=3, mirror=True)
    torch.testing.assert_close(first, eager, rtol=1e-4, atol=1e-5)
    assert torch.equal(predict_probs(compiled, x, (8, 8, 8), overlap=0.5, batch=3, mirror=True), first)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1        # compiled once
    # another window size in the same process (the same forward code): compiled again for it, with
    # static shapes (automatic dynamic shapes failed to lower here), and still the eager result
    other = Compiled(model, "evaluate.compile")
    torch.testing.assert_close(predict_probs(other, x, (16, 16, 16), overlap=0.5, batch=2),
                               predict_probs(model, x, (16, 16, 16), overlap=0.5, batch=2), rtol=1e-4, atol=1e-5)
