"""Move arrays between a file's own voxel grid and the canonical, brain-cropped grid the network sees.

Canonical means RAS+, as nibabel's `as_closest_canonical`: array axes 0, 1, 2 run towards the
subject's Right, Anterior and Superior. Only axis flips and
permutations are used (no resampling), so the round trip is exact.
"""

from __future__ import annotations

import numpy as np
from nibabel import orientations as ornt

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # [lo, hi) per spatial axis


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient the last three axes of `array` to RAS; return the array and its new affine."""
    spatial = array.shape[-3:]
    transform = ornt.io_orientation(affine)
    out = _apply(array, transform)
    new_affine = affine @ ornt.inv_ornt_aff(transform, spatial)
    return out, new_affine


def from_canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo `to_canonical`: bring a RAS array back to the grid of the file whose affine is given."""
    transform = ornt.ornt_transform(ornt.axcodes2ornt("RAS"), ornt.io_orientation(affine))
    return _apply(array, transform)


def _apply(array: np.ndarray, transform: np.ndarray) -> np.ndarray:
    # apply_orientation works on the leading axes; move the spatial axes to the front and back.
    lead = array.ndim - 3
    moved = np.moveaxis(array, range(lead), range(3, 3 + lead)) if lead else array
    out = ornt.apply_orientation(moved, transform)
    out = np.moveaxis(out, range(3, 3 + lead), range(lead)) if lead else out
    return np.ascontiguousarray(out)


def bounding_box(mask: np.ndarray, margin: int = 0) -> Box | None:
    """[lo, hi) per axis of the True voxels of a 3D mask, grown by `margin` and clipped to the
    array; None when the mask is empty."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if not hits.size:
            return None
        box.append((max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)  # type: ignore[return-value]


def foreground_box(images: np.ndarray, seg: np.ndarray | None = None) -> Box:
    """Bounding box of voxels that are non-zero in any channel (the head), or labelled in `seg`."""
    mask = np.any(images != 0, axis=0)
    if seg is not None:
        mask |= seg > 0
    box = bounding_box(mask)
    if box is None:
        raise ValueError("the images are zero everywhere: there is no head to crop to")
    return box


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The part of the last three axes of `array` inside `box`."""
    return array[(..., *(slice(lo, hi) for lo, hi in box))]


def paste(cropped: np.ndarray, box: Box, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of `crop`: a zero array of spatial `shape` with `cropped` placed at `box`."""
    out = np.zeros(cropped.shape[:-3] + tuple(shape), dtype=cropped.dtype)
    out[(..., *(slice(lo, hi) for lo, hi in box))] = cropped
    return out


def restore(cropped: np.ndarray, box: Box, original_shape: tuple[int, int, int],
            original_affine: np.ndarray) -> np.ndarray:
    """Bring a cropped canonical array back to its source file's grid (as recorded in the manifest)."""
    transform = ornt.io_orientation(original_affine)
    # axis i of the source becomes canonical axis transform[i, 0]
    canonical_shape = [0, 0, 0]
    for i, (axis, _) in enumerate(transform):
        canonical_shape[int(axis)] = int(original_shape[i])
    return from_canonical(paste(cropped, box, tuple(canonical_shape)), original_affine)
