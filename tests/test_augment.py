"""Augmentation: image and labels stay aligned under every spatial draw (checked against SciPy's
independent resampler), each intensity transform does what nnU-Net's does, draws follow the stated
probabilities, and everything is a function of the per-sample seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import augment
from augment import Draw, apply, draw_intensity, draw_spatial, region_for, resample, rotation

PATCH = (20, 20, 20)


def blobs(shape=(40, 44, 36), seed=0) -> np.ndarray:
    """Labels 1..4 as 5×5×5 cubes: a one-voxel misalignment changes many of each cube's voxels."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    for _ in range(40):
        c = rng.integers(3, np.array(shape) - 3)
        label[c[0] - 2:c[0] + 3, c[1] - 2:c[1] + 3, c[2] - 2:c[2] + 3] = rng.integers(1, 5)
    return label


def onehot(label: np.ndarray) -> np.ndarray:
    return np.stack([(label == k).astype(np.float32) for k in range(1, 5)])


def assert_aligned(x: torch.Tensor, y: torch.Tensor) -> None:
    """Where channel k of a resampled one-hot image is 1 (all voxels blended were label k), the
    resampled labels say k; where it is 0, they do not."""
    assert (x > 1 - 1e-4).any()
    for k in range(1, 5):
        inside, outside = x[k - 1] > 1 - 1e-4, x[k - 1] < 1e-4
        assert bool((y[inside] == k).all()) and bool((y[outside] != k).all())


def spatial_draws(n: int = 12):
    rng = np.random.default_rng(1)
    for _ in range(n):
        yield rotation(rng.uniform(-augment.MAX_ANGLE, augment.MAX_ANGLE, 3)) * rng.uniform(*augment.SCALE)


def test_resampling_matches_scipy_and_keeps_labels_on_the_image():
    label = blobs()
    image = onehot(label)                                   # label-derived image
    centre = (np.array(label.shape) - 1) / 2
    for matrix in spatial_draws():
        box, offset = region_for(matrix, centre, PATCH, label.shape)
        x, y = resample(torch.from_numpy(image[(slice(None), *box)]), torch.from_numpy(label[box]),
                        matrix, offset, PATCH)
        assert x.shape == (4, *PATCH) and x.dtype == torch.float32 and y.dtype == torch.uint8
        # independent implementation: SciPy's affine_transform on the whole case, same mapping
        full_offset = offset + np.array([s.start for s in box])
        expected = ndimage.affine_transform(image[1], matrix, full_offset, output_shape=PATCH, order=1,
                                            mode="constant", cval=0.0)
        np.testing.assert_allclose(x[1].numpy(), expected, atol=2e-3)
        expected_y = ndimage.affine_transform(label, matrix, full_offset, output_shape=PATCH, order=0)
        assert (y.numpy() == expected_y).mean() > 0.995            # ties at exactly .5 may round apart
        assert_aligned(x, y)


def test_identity_draw_is_the_plain_cut():
    label = blobs()
    image = np.random.default_rng(0).standard_normal((4, *label.shape)).astype(np.float32)
    centre = np.array([15.5, 20.5, 17.5])
    box, offset = region_for(np.eye(3), centre, PATCH, label.shape)
    x, y = resample(torch.from_numpy(image[(slice(None), *box)]), torch.from_numpy(label[box]), np.eye(3),
                    offset, PATCH)
    cut = tuple(slice(int(c - 9.5), int(c - 9.5) + 20) for c in centre)
    np.testing.assert_allclose(x.numpy(), image[(slice(None), *cut)], atol=1e-5)
    assert np.array_equal(y.numpy(), label[cut])


def test_region_is_clipped_to_the_case():
    matrix = rotation(np.array([0.5, 0.2, -0.4])) * 1.4
    box, _ = region_for(matrix, np.array([2.0, 3.0, 30.0]), (32, 32, 32), (40, 44, 36))
    assert all(0 <= s.start < s.stop <= n for s, n in zip(box, (40, 44, 36)))


def test_draw_probabilities_follow_nnunet():
    n = 4000
    rngs = [np.random.default_rng([7, i]) for i in range(n)]
    spatial = np.mean([draw_spatial(r) is not None for r in rngs])
    assert abs(spatial - (1 - 0.8 * 0.8)) < 0.03
    draws = [draw_intensity(r, 4, "full") for r in rngs]
    for name, p in (("noise", 0.1), ("brightness", 0.15), ("contrast", 0.15), ("gamma_inverted", 0.1),
                    ("gamma", 0.3)):
        assert abs(np.mean([getattr(d, name) is not None for d in draws]) - p) < 0.025, name
    assert abs(np.mean([bool(d.blur) for d in draws]) - 0.2) < 0.025
    blurred = [s is not None for d in draws if d.blur for s in d.blur]
    assert abs(np.mean(blurred) - 0.5) < 0.05
    assert abs(np.mean([bool(d.lowres) for d in draws]) - 0.25) < 0.025
    assert abs(np.mean([d.flips[0] for d in draws]) - 0.5) < 0.03
    gammas = [g for d in draws if d.gamma for g in d.gamma]
    assert min(gammas) >= 0.7 and max(gammas) <= 1.5 and abs(np.median(gammas) - 1) < 0.05
    light = draw_intensity(np.random.default_rng(0), 4, "light")
    assert len(light.scale) == 4 and all(0.9 <= s <= 1.1 for s in light.scale)
    assert draw_intensity(np.random.default_rng(0), 4, "none") == Draw()


def _patch(seed=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((4, *PATCH)).astype(np.float32) + 2)
    return x, torch.from_numpy(blobs(PATCH, seed))


def test_each_intensity_transform():
    x, y = _patch()
    same = apply(x, y, Draw(), PATCH)
    assert torch.equal(same[0], x) and torch.equal(same[1], y)
    blurred = apply(x, y, Draw(blur=[0.8, None, None, None]), PATCH)[0]
    expected = ndimage.gaussian_filter(x[0].numpy(), 0.8, mode="constant", truncate=3.0)
    np.testing.assert_allclose(blurred[0].numpy(), expected, atol=1e-5)
    assert torch.equal(blurred[1:], x[1:])
    contrast = apply(x, y, Draw(contrast=[1.25, 0.75, 1, 1]), PATCH)[0]
    for c in range(2):
        assert contrast[c].min() >= x[c].min() - 1e-6 and contrast[c].max() <= x[c].max() + 1e-6
    assert abs(contrast[1].std() - 0.75 * x[1].std()) < 1e-3       # shrunk about the mean, inside the range
    for invert in (False, True):
        draw = Draw(gamma_inverted=[1.4] * 4) if invert else Draw(gamma=[0.7] * 4)
        g = apply(x, y, draw, PATCH)[0]
        assert not torch.allclose(g, x)
        torch.testing.assert_close(g.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-4, rtol=0)
        torch.testing.assert_close(g.std(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), atol=1e-3, rtol=0)
    low = apply(x, y, Draw(lowres=[0.5, None, None, None]), PATCH)[0]
    assert low.shape == x.shape and (low[0] - x[0]).abs().mean() > 0.1 and torch.equal(low[1:], x[1:])
    bright = apply(x, y, Draw(brightness=[1.2, 1, 1, 0.8]), PATCH)[0]
    torch.testing.assert_close(bright[0], x[0] * 1.2)
    noisy = [apply(x, y, Draw(noise=(0.3, 5)), PATCH)[0] for _ in range(2)]
    assert torch.equal(noisy[0], noisy[1]) and abs((noisy[0] - x).std() - 0.3) < 0.01
    fx, fy = apply(x, y, Draw(flips=(True, False, True)), PATCH)
    assert torch.equal(fx, x.flip([1, 3])) and torch.equal(fy, y.flip([0, 2]))


@pytest.mark.parametrize("seed", range(5))
def test_full_augmentation_keeps_labels_on_the_image(seed):
    """Flips and resampling together move image and labels alike."""
    rng = np.random.default_rng(seed)
    label = blobs(seed=seed)
    image = torch.from_numpy(onehot(label))
    matrix = next(spatial_draws(1)) if seed % 2 else None
    draw = Draw(flips=tuple(bool(v) for v in rng.integers(0, 2, 3)))
    centre = (np.array(label.shape) - 1) / 2
    if matrix is None:
        lo = (centre - 9.5).astype(int)
        x, y = image[:, lo[0]:lo[0] + 20, lo[1]:lo[1] + 20, lo[2]:lo[2] + 20], torch.from_numpy(
            label[lo[0]:lo[0] + 20, lo[1]:lo[1] + 20, lo[2]:lo[2] + 20])
    else:
        box, draw.offset = region_for(matrix, centre, PATCH, label.shape)
        x, y, draw.matrix = image[(slice(None), *box)], torch.from_numpy(label[box]), matrix
    assert_aligned(*apply(x, y, draw, PATCH))
