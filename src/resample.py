"""Change the voxel size of a cropped, canonical case: the images and labels preprocess stores at the
training spacing (`preprocess.spacing_mm`), and predict's input at the spacing the weights were
trained at. The way back (probabilities to the case's own grid) is `inference.resize`, on the device.

Grids are aligned at their outer edges, as nnU-Net and scikit-image's `resize` do: n voxels of s mm
become m = round(n·s/t) voxels of n·s/m mm (≈ t), covering the same extent, and voxel centre j of
the new grid lies at (j + 0.5)·n/m − 0.5 of the old one. Images: third-order spline (or linear);
labels: each nested region (WT, TC, ET, RC) resampled linearly and kept where ≥ 0.5, then painted back
in brats.PAINT's order, as nnU-Net resamples segmentations one class at a time.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from brats import labels_to_regions, regions_to_labels

ORDERS = {"cubic": 3, "linear": 1}


def target_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    """Voxels per axis at `target` spacing for the extent of `shape` voxels of `spacing` mm."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def spacing_after(shape: tuple[int, ...], spacing: tuple[float, ...], new_shape: tuple[int, ...]) -> tuple[float, ...]:
    """The voxel size once `shape` voxels of `spacing` mm are resampled to `new_shape` (same extent)."""
    return tuple(round(n * s / m, 6) for n, s, m in zip(shape, spacing, new_shape))


def _zoom(volume: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    factors = [m / n for m, n in zip(shape, volume.shape)]
    out = ndimage.zoom(volume, factors, order=order, mode="nearest", grid_mode=True)
    assert out.shape == tuple(shape), (out.shape, shape)   # zoom rounds n·factor, which is m here
    return out


def images(volumes: np.ndarray, shape: tuple[int, ...], interpolation: str = "cubic") -> np.ndarray:
    """(C, X, Y, Z) float32 images resampled to spatial `shape`."""
    return np.stack([_zoom(v.astype(np.float32, copy=False), shape, ORDERS[interpolation]) for v in volumes])


def mask(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean mask resampled to `shape`: linear, kept where ≥ 0.5."""
    return _zoom(volume.astype(np.float32), shape, 1) >= 0.5


def labels(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A 2024 label map resampled to `shape` region by region (module docstring)."""
    regions = labels_to_regions(volume)                      # (R, X, Y, Z) bool, brats.MODEL_REGIONS
    return regions_to_labels(np.stack([mask(r, shape) for r in regions]))
