"""Read and validate BraTS cases from NIfTI; write NIfTI files byte-for-byte reproducibly."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brats import MAX_LABEL, MODALITIES, SEG, case_file
from errors import UserError
from files import atomic_write

# Modalities of one case are co-registered; their affines may differ only by rounding in the header.
AFFINE_TOLERANCE_MM = 1e-3


class CaseError(UserError):
    """A case cannot be used; the message names the case, the file and the reason."""


@dataclass
class RawCase:
    name: str
    images: np.ndarray          # (C, X, Y, Z) float32, channels in MODALITIES order
    seg: np.ndarray | None      # (X, Y, Z) uint8 labels 0..4, or None where no seg was asked for
    affine: np.ndarray          # (4, 4) voxel -> world (mm)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write `.nii.gz` whose bytes depend only on the inputs: no timestamp or file name in the gzip header."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    payload = img.to_bytes()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                   compresslevel=1) as gz:
            gz.write(payload)
    atomic_write(path, write)


def load_volume(case: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine of one 3D file; any read failure becomes a CaseError naming the file."""
    if not path.exists():
        raise CaseError(f"{case}: missing file {path.name} (expected in {path.parent})")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for truncated or corrupt files
        raise CaseError(f"{case}: cannot read {path.name}: {type(e).__name__}: {e} "
                        "(truncated or corrupt file? re-download or re-extract it)") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{case}: {path.name} has shape {data.shape}; a 3D volume is expected")
    return data, img.affine


def read_case(case_dir: Path, with_seg: bool) -> RawCase:
    """Load the four modalities (and the seg) of one case folder and check that they fit together."""
    case = case_dir.name
    images, affine, shape, ref = [], None, None, None
    for mod in MODALITIES:
        path = case_file(case_dir, mod)
        data, aff = load_volume(case, path)
        if shape is None:
            shape, affine, ref = data.shape, aff, path.name
        _check_geometry(case, path.name, data.shape, aff, ref, shape, affine)
        data = data.astype(np.float32, copy=False)
        bad = np.count_nonzero(~np.isfinite(data))
        if bad:
            raise CaseError(f"{case}: {path.name} has {bad} NaN or infinite voxels; fix or drop the case")
        _check_plausible(case, path.name, data)
        images.append(data)
    seg = _read_seg(case_dir, ref, shape, affine) if with_seg else None
    return RawCase(case, np.stack(images), seg, np.asarray(affine, dtype=np.float64))


# A voxel this many times brighter than the head's 99.9th percentile is a corrupt value, not signal:
# one such voxel would flatten its whole channel after z-scoring.
OUTLIER_FACTOR = 1000.0


def _check_plausible(case: str, name: str, data: np.ndarray) -> None:
    magnitude = np.abs(data)
    peak = float(magnitude.max(initial=0.0))
    head = magnitude[magnitude > 0]
    if peak == 0 or peak <= OUTLIER_FACTOR * float(head.mean()):   # cheap check first: fine for real scans
        return
    typical = float(np.percentile(head, 99.9))
    if peak > OUTLIER_FACTOR * typical:
        count = int(np.count_nonzero(magnitude > OUTLIER_FACTOR * typical))
        raise CaseError(f"{case}: {name} has {count} voxel(s) above {OUTLIER_FACTOR:g} × the head's 99.9th "
                        f"percentile ({peak:.3g} against {typical:.3g}): corrupt values? fix or drop the case")


def _check_geometry(case: str, name: str, shape: tuple, affine: np.ndarray, ref: str,
                    ref_shape: tuple, ref_affine: np.ndarray) -> None:
    if shape != ref_shape:
        raise CaseError(f"{case}: {name} has shape {shape} but {ref} has {ref_shape}; "
                        "all files of a case must share one grid")
    if not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE_MM, rtol=0):
        raise CaseError(f"{case}: the affine of {name} differs from that of {ref} by up to "
                        f"{np.abs(affine - ref_affine).max():.4g} mm; the files are not co-registered")


def _read_seg(case_dir: Path, ref: str, shape: tuple, affine: np.ndarray) -> np.ndarray:
    case = case_dir.name
    path = case_file(case_dir, SEG)
    data, aff = load_volume(case, path)
    _check_geometry(case, path.name, data.shape, aff, ref, shape, affine)
    return labels_from_array(data, f"{case}: {path.name}")


# Float label files hold whole numbers up to rounding noise (2.0000001); anything further off is not a label.
LABEL_TOLERANCE = 1e-3


def labels_from_array(data: np.ndarray, where: str) -> np.ndarray:
    """Round a label array (float files are common) to uint8, rejecting values outside 0..4 and
    values that are not whole numbers up to float noise."""
    values = np.unique(data)
    if not np.all(np.isfinite(values)):
        raise CaseError(f"{where}: label file holds NaN or infinite values")
    rounded = np.rint(values)
    fractional = values[np.abs(values - rounded) > LABEL_TOLERANCE]
    if fractional.size:
        raise CaseError(f"{where}: label value {fractional[0]:g} is not a whole number; a label map holds "
                        f"0..{MAX_LABEL} (is this a probability map or a resampled, interpolated label file?)")
    bad = rounded[(rounded < 0) | (rounded > MAX_LABEL)]
    if bad.size:
        raise CaseError(f"{where}: label value {bad[0]:g} is not a BraTS 2024 label (0..{MAX_LABEL}); "
                        "is this a segmentation of another edition?")
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.uint8)
    return np.rint(data).astype(np.uint8)
