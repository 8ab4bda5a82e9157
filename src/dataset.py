"""Training patches from the preprocessed, memory-mapped cases.

Each sample's random draws (which case, where, which flips and intensity changes) come from its own
generator seeded by (seed, epoch, index). So a batch is the same whichever DataLoader worker makes
it, however many workers there are, and after a resume: determinism does not hang on worker seeding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from layout import open_case


def choose_corner(rng: np.random.Generator, label: np.ndarray, patch: tuple[int, int, int],
                  foreground: bool) -> np.ndarray:
    """Patch corner (may be negative or run past the end: the patch is then zero-padded)."""
    shape = np.array(label.shape)
    size = np.array(patch)
    if foreground:
        # a random labelled voxel of a random label present, so rare labels are seen as often
        values = np.unique(label)
        values = values[values > 0]
        if values.size:
            value = rng.choice(values)
            voxels = np.flatnonzero(label.reshape(-1) == value)
            centre = np.array(np.unravel_index(rng.choice(voxels), label.shape))
            return centre - size // 2 + rng.integers(-(size // 4), size // 4 + 1)
    low = np.minimum(0, shape - size)           # a patch larger than the case is centred on it
    high = np.maximum(0, shape - size)
    return np.where(shape >= size, rng.integers(0, high + 1), low // 2)


def cut(array: np.ndarray, corner: np.ndarray, patch: tuple[int, int, int]) -> np.ndarray:
    """array[..., corner:corner+patch] with zeros where the window leaves the array."""
    spatial = array.shape[-3:]
    out = np.zeros(array.shape[:-3] + tuple(patch), dtype=array.dtype)
    src, dst = [], []
    for c, p, n in zip(corner, patch, spatial):
        lo, hi = max(c, 0), min(c + p, n)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - c, lo - c + max(0, hi - lo)))
    out[(..., *dst)] = array[(..., *src)]
    return out


class PatchDataset(Dataset):
    """`length` random patches per epoch: (image (4, P, P, P) float32, labels (P, P, P) uint8)."""

    def __init__(self, pre_dir: Path, cases: list[str], patch: tuple[int, int, int], length: int,
                 foreground_fraction: float, augment: bool, seed: int):
        self.pre_dir, self.cases, self.patch = pre_dir, cases, patch
        self.length, self.foreground_fraction, self.augment, self.seed = length, foreground_fraction, augment, seed
        self.epoch = 0
        for case in cases:  # fail now, with the case's name, rather than in a worker later
            open_case(pre_dir, case)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, label = open_case(self.pre_dir, self.cases[rng.integers(len(self.cases))])
        corner = choose_corner(rng, label, self.patch, rng.random() < self.foreground_fraction)
        x, y = cut(image, corner, self.patch), cut(label, corner, self.patch)
        if self.augment:
            x, y = augment(rng, x, y)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


def augment(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Random flip on each axis; per-channel intensity scale (×0.9–1.1) and shift (±0.1 std)."""
    for axis in range(3):
        if rng.random() < 0.5:
            x, y = np.flip(x, axis + 1), np.flip(y, axis)
    scale = rng.uniform(0.9, 1.1, (x.shape[0], 1, 1, 1)).astype(np.float32)
    shift = rng.uniform(-0.1, 0.1, (x.shape[0], 1, 1, 1)).astype(np.float32)
    return x * scale + shift, y
