"""What turns a raw BraTS case into the network's input, for training (preprocess) and prediction
(predict) alike: reorient to RAS, crop to the head, resample to the training spacing when asked,
z-score inside the head."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import resample
from geometry import Box, crop, foreground_box, to_canonical
from errors import SetupError
from nifti import CaseError, RawCase


# Precision of the network's input as stored and predicted from: z-scores lose at most ~1e-3 of a
# standard deviation, far below the scans' noise, and take half the bytes of float32.
INPUT_DTYPE = np.float16


def zscore(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each channel minus its mean, over its std, both taken inside `mask`; zero outside the mask."""
    out = np.zeros_like(images, dtype=np.float32)
    for c, channel in enumerate(images):
        values = channel[mask].astype(np.float64)
        std = values.std()
        if std == 0:
            std = 1.0  # a constant channel carries no contrast; keep it at zero instead of dividing by 0
        out[c][mask] = ((values - values.mean()) / std).astype(np.float32)
    return out


@dataclass(frozen=True)
class Prepared:
    """A case as the network sees it, and what maps it back to the source file's grid."""
    image: np.ndarray            # (4, x, y, z) float16 z-scores at `spacing`
    labels: np.ndarray | None    # (x, y, z) uint8 at `spacing`, or None without a seg
    native_labels: np.ndarray | None   # the same on the native grid (the crop of the canonical source)
    box: Box                     # the crop, in the canonical source grid
    affine: np.ndarray           # canonical affine of the source grid (voxel -> mm)
    spacing: tuple[float, float, float]   # voxel size of `image`
    native_spacing: tuple[float, float, float]

    @property
    def native_shape(self) -> tuple[int, int, int]:
        return tuple(hi - lo for lo, hi in self.box)

    @property
    def resampled(self) -> bool:
        return tuple(self.image.shape[1:]) != self.native_shape


def prepare(raw: RawCase, spacing: tuple[float, float, float] | None = None,
            interpolation: str = "cubic") -> Prepared:
    """Reorient to RAS, crop to the head, resample to `spacing` (None, or a spacing that leaves the
    shape as it is: no resampling), z-score, round to float16: the network's input, as training and
    prediction both need it (so predict sees exactly what evaluate reads back from the store)."""
    images, affine = to_canonical(raw.images, raw.affine)
    labels = to_canonical(raw.seg, raw.affine)[0] if raw.seg is not None else None
    try:
        box = foreground_box(images, labels)
    except ValueError as e:
        raise CaseError(f"{raw.name}: {e}") from None
    images = crop(images, box)
    native_labels = np.ascontiguousarray(crop(labels, box)) if labels is not None else None
    labels = native_labels
    native_spacing = stored_spacing = spacing_of(affine)
    head = np.any(images != 0, axis=0)
    native_shape = head.shape
    shape = resample.target_shape(native_shape, native_spacing, spacing) if spacing else native_shape
    if shape != native_shape:
        check_memory(raw.name, shape, native_spacing)
        images = resample.images(images, shape, interpolation)
        head = resample.mask(head, shape)
        images *= head                     # the spline rings outside the head: keep it exactly zero
        labels = resample.labels(labels, shape) if labels is not None else None
        stored_spacing = resample.spacing_after(native_shape, native_spacing, shape)
    normalised = zscore(images, head)
    with np.errstate(over="ignore"):
        stored = normalised.astype(INPUT_DTYPE)
    if not np.isfinite(stored).all():
        raise CaseError(f"{raw.name}: an intensity lies over {np.finfo(INPUT_DTYPE).max:g} standard deviations "
                        "from its modality's mean inside the head; check the scan for corrupt voxels")
    return Prepared(stored, labels, native_labels, box, affine, stored_spacing, native_spacing)


# Bytes per voxel of the resampled case at the peak of `prepare`: four float32 channels resampled,
# their z-scores, the float16 copy, the head mask and the labels' region masks.
PEAK_BYTES_PER_VOXEL = 48
GIB = 2 ** 30


def available_memory() -> int:
    """Bytes of memory this machine can give now (MemAvailable), or its total where that is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(case: str, shape: tuple[int, ...], native_spacing: tuple[float, ...]) -> None:
    """Refuse, before allocating, a resampling that cannot fit in memory (a spacing of 0.1 mm on a
    2 mm case is 20 GiB a channel), with the figure."""
    voxels = int(np.prod(shape, dtype=np.int64))
    need, have = voxels * PEAK_BYTES_PER_VOXEL, available_memory()
    if need > have:
        size = "×".join(str(n) for n in shape)
        raise SetupError(f"{case}: resampling its {'×'.join(f'{v:g}' for v in native_spacing)} mm voxels to the "
                         f"spacing asked makes {size} voxels, {voxels * 4 / GIB:.1f} GiB a channel and about "
                         f"{need / GIB:.0f} GiB while it is prepared, more than the {have / GIB:.1f} GiB of memory "
                         "available; choose a coarser preprocess.spacing_mm (2.0 on a CPU, as the CPU recipe of "
                         "docs/real-data.md; 1.0 is BraTS' own grid)")


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) along the array axes of an affine."""
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(0)).round(6))
