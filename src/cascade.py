"""A finer second stage on the tumour's box, after nnU-Net's cascade: a first network, trained at a
coarse spacing over the whole head, finds the tumour; a second one, trained at the case's own spacing
on tumour-centred patches, predicts only inside the box around what the first found, and its
probabilities replace the first's there, for the regions it refines (the thin enhancing rims that a
2 mm grid loses). Outside the box, and for a case where the first stage finds nothing, the first
stage's probabilities stand.

Unlike nnU-Net's cascade, the second network does not take the first's probabilities as input, so it
trains on its own (on the ground truth's tumour) and any network of this project can serve as either
stage.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

Box = tuple[slice, slice, slice]


class Probabilities(Protocol):
    """What refine needs of the second stage (predictor.Predictor is one)."""

    def probs(self, image: np.ndarray | torch.Tensor) -> torch.Tensor: ...


def tumour_box(mask: np.ndarray, margin: int, min_size: Sequence[int] = (0, 0, 0)) -> Box | None:
    """The box around the True voxels of `mask`, grown by `margin` voxels on every side and, where
    still smaller than `min_size` (the second stage's patch: no zero padding inside the head), grown
    evenly to it; clipped to the grid. None when the mask is empty."""
    found = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], np.nonzero(mask.any(axis=(0, 1)))[0]
    if any(len(f) == 0 for f in found):
        return None
    box = []
    for where, size, least in zip(found, mask.shape, min_size):
        lo, hi = max(int(where[0]) - margin, 0), min(int(where[-1]) + 1 + margin, size)
        short = min(least, size) - (hi - lo)
        if short > 0:                                     # grow evenly, then shift back inside the grid
            lo, hi = lo - short // 2, hi + short - short // 2
            shift = max(0, -lo) - max(0, hi - size)
            lo, hi = lo + shift, hi + shift
        box.append(slice(lo, hi))
    return tuple(box)


def refine(coarse: torch.Tensor, image: np.ndarray | torch.Tensor, fine: Probabilities, regions: Sequence[str],
           refined: Sequence[str], margin: int, min_size: Sequence[int] = (0, 0, 0), cutoff: float = 0.5,
           locate: str = "WT") -> tuple[torch.Tensor, Box | None]:
    """The first stage's region probabilities `coarse` (R, X, Y, Z, channels named by `regions`, on
    the case's grid) with the channels `refined` replaced, inside the box around the first stage's
    `locate` region (probability above `cutoff`, grown by `margin` voxels), by the second stage's
    probabilities of `image` (C, X, Y, Z, the same grid) cropped to that box. Returns the new
    probabilities (a copy) and the box (None: nothing found, `coarse` unchanged)."""
    if tuple(image.shape[1:]) != tuple(coarse.shape[1:]):
        raise ValueError(f"the second stage's image is {tuple(image.shape[1:])} voxels, the first stage's "
                         f"probabilities {tuple(coarse.shape[1:])}: both must be on the case's grid")
    unknown = [r for r in (*refined, locate) if r not in regions]
    if unknown:
        raise ValueError(f"regions {unknown} are not among the outputs {list(regions)}")
    out = coarse.clone()
    box = tumour_box((coarse[regions.index(locate)] > cutoff).numpy(), margin, min_size)
    if box is None:
        return out, None
    crop = image[(slice(None), *box)]
    probs = fine.probs(crop)
    for region in refined:
        out[(regions.index(region), *box)] = probs[regions.index(region)]
    return out, box
