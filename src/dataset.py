"""Training patches from the preprocessed cases (src/layout.py), augmented by src/augment.py.

Each sample's random draws (which case, where, which rotation, flips and intensity changes) come from
its own generator seeded by (seed, epoch, index). So a batch is the same whichever DataLoader worker makes
it, however many workers there are, and after a resume: determinism does not hang on worker seeding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

import augment
from layout import open_case


def choose_corner(rng: np.random.Generator, label: np.ndarray, patch: tuple[int, int, int],
                  foreground: bool) -> np.ndarray:
    """Patch corner (may be negative or run past the end: the patch is then zero-padded)."""
    shape = np.array(label.shape)
    size = np.array(patch)
    if foreground:
        # a random labelled voxel of a random label present, so rare labels are seen as often
        values = np.flatnonzero(np.bincount(label.reshape(-1), minlength=1)[1:]) + 1   # labels present
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
    """`length` random samples per epoch: a cut region, its labels and the augmentation to apply on
    the training device (`__getitem__`); `patch_at` gives a sample as training sees it."""

    def __init__(self, pre_dir: Path, cases: list[str], patch: tuple[int, int, int], length: int,
                 foreground_fraction: float, augmentation: str, seed: int, modality_dropout: float = 0.0):
        if augmentation not in augment.AUGMENTATIONS:
            raise ValueError(f"augmentation {augmentation!r} is not one of {augment.AUGMENTATIONS}")
        self.pre_dir, self.cases, self.patch = pre_dir, cases, patch
        self.length, self.foreground_fraction, self.seed = length, foreground_fraction, seed
        self.augmentation, self.modality_dropout = augmentation, modality_dropout
        self.epoch = 0
        for case in cases:  # fail now, with the case's name, rather than in a worker later
            open_case(pre_dir, case)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, augment.Draw]:
        """The cut region (C, ...) float16, its labels uint8 and the augmentation to apply on the
        device (`augment.to_batch`); the region is the patch unless the draw rotates or scales it."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, stored_label = open_case(self.pre_dir, self.cases[rng.integers(len(self.cases))])
        label = stored_label[...]
        corner = choose_corner(rng, label, self.patch, rng.random() < self.foreground_fraction)
        matrix = augment.draw_spatial(rng) if self.augmentation == "full" else None
        draw = augment.draw_intensity(rng, image.shape[0], self.augmentation)
        if self.modality_dropout and rng.random() < self.modality_dropout:
            draw.dropped = int(rng.integers(image.shape[0]))
        if matrix is None:
            x, y = cut(image, corner, self.patch), cut(label, corner, self.patch)
        else:
            centre = corner + (np.array(self.patch) - 1) / 2
            box, draw.offset = augment.region_for(matrix, centre, self.patch, label.shape)
            x, y, draw.matrix = image[(slice(None), *box)], label[box], matrix
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)), draw

    def patch_at(self, index: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Sample `index` as training sees it: augmented on `device`, (C, *patch) float32 and labels."""
        x, y, draw = self[index]
        return augment.apply(x.to(device), y.to(device), draw, self.patch)
