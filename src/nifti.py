"""Read and validate BraTS cases from NIfTI; write NIfTI files byte-for-byte reproducibly."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from editions import EDITIONS, Case, Edition
from errors import UserError
from files import atomic_write

# Modalities of one case are co-registered; their affines may differ only by rounding in the header.
AFFINE_TOLERANCE_MM = 1e-3


class CaseError(UserError):
    """A case cannot be used; the message names the case, the file and the reason."""


@dataclass
class RawCase:
    name: str
    images: np.ndarray          # (C, X, Y, Z) float32, channels in brats.MODALITIES order
    seg: np.ndarray | None      # (X, Y, Z) uint8 labels 0..4 in the 2024 meaning, or None where not asked for
    affine: np.ndarray          # (4, 4) voxel -> world (mm)
    edition: str = "2024"       # editions.EDITIONS key of the source files


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


def load_volume(case: str, path: Path, channels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Array and affine of one 3D file (or, with `channels`, one 4D file of that many volumes); any
    read failure becomes a CaseError naming the file."""
    if not path.exists():
        present = sorted(p.name for p in path.parent.iterdir() if p.name.lower().endswith((".nii", ".nii.gz"))) \
            if path.parent.is_dir() else []
        held = f"; it holds {', '.join(present[:4])}{' …' if len(present) > 4 else ''}" if present else ""
        raise CaseError(f"{case}: missing file {path.name} (expected in {path.parent}{held})")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for truncated or corrupt files
        raise CaseError(f"{case}: cannot read {path.name}: {type(e).__name__}: {e} "
                        "(truncated or corrupt file? re-download or re-extract it)") from None
    if channels:
        if data.ndim != 4 or data.shape[3] != channels:
            raise CaseError(f"{case}: {path.name} has shape {data.shape}; a 4D file of {channels} volumes "
                            "is expected (the Decathlon's FLAIR, T1w, T1gd, T2w)")
        return data, img.affine
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{case}: {path.name} has shape {data.shape}; a 3D volume is expected")
    return data, img.affine


def _volumes(case: Case):
    """(file name, array, affine) of each modality in brats.MODALITIES order."""
    edition = case.edition
    if edition.channels:
        path = case.images[0]
        data, affine = load_volume(case.name, path, channels=len(edition.channels))
        for c in edition.channels:
            yield f"{path.name} (volume {c})", data[..., c], affine
        return
    for path in case.images:
        yield (path.name, *load_volume(case.name, path))


def _check_folder(case: Case) -> None:
    """A case folder that is not one, or holds nothing, says so (rather than naming its first file)."""
    folder = case.location
    if folder.is_symlink() and not folder.exists():
        raise CaseError(f"{case.name}: {folder} is a link to {folder.readlink()}, which does not exist; "
                        "restore its target or remove the link")
    if not folder.is_dir():
        raise CaseError(f"{case.name}: {folder} is named like a case but is not a folder; a case is a folder "
                        "holding its files (extract it, or move it out of the input folder)")
    try:
        empty = not any(folder.iterdir())
    except OSError as e:
        raise CaseError(f"{case.name}: cannot list {folder}: {e.strerror or e}") from None
    if empty:
        raise CaseError(f"{case.name}: the case folder {folder} is empty (an extraction that failed?); "
                        "extract the case again or remove the folder")


def read_case(case: Case, with_seg: bool) -> RawCase:
    """Load the four modalities (and the seg, mapped to the 2024 labels) of one case of any edition
    and check that they fit together."""
    if not case.edition.channels:
        _check_folder(case)
    images, affine, shape, ref = [], None, None, None
    for name, data, aff in _volumes(case):
        if shape is None:
            shape, affine, ref = data.shape, aff, name
        _check_geometry(case.name, name, data.shape, aff, ref, shape, affine)
        data = data.astype(np.float32, copy=False)
        bad = np.count_nonzero(~np.isfinite(data))
        if bad:
            raise CaseError(f"{case.name}: {name} has {bad} NaN or infinite voxels; fix or drop the case")
        _check_plausible(case.name, name, data)
        images.append(data)
    seg = _read_seg(case, ref, shape, affine) if with_seg else None
    return RawCase(case.name, np.stack(images), seg, np.asarray(affine, dtype=np.float64), case.edition.key)


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


def _read_seg(case: Case, ref: str, shape: tuple, affine: np.ndarray) -> np.ndarray:
    data, aff = load_volume(case.name, case.seg)
    _check_geometry(case.name, case.seg.name, data.shape, aff, ref, shape, affine)
    return labels_from_array(data, f"{case.name}: {case.seg.name}", case.edition)


# Float label files hold whole numbers up to rounding noise (2.0000001); anything further off is not a label.
LABEL_TOLERANCE = 1e-3


def labels_from_array(data: np.ndarray, where: str, edition: Edition = EDITIONS["2024"]) -> np.ndarray:
    """A label array of `edition` (float files are common) as uint8 labels of the 2024 meaning,
    rejecting values that are not whole numbers up to float noise or not labels of that edition."""
    values = np.unique(data)
    if not np.all(np.isfinite(values)):
        raise CaseError(f"{where}: label file holds NaN or infinite values")
    rounded = np.rint(values)
    fractional = values[np.abs(values - rounded) > LABEL_TOLERANCE]
    if fractional.size:
        raise CaseError(f"{where}: label value {fractional[0]:g} is not a whole number; a label map holds "
                        f"{_values(edition)} (is this a probability map or a resampled, interpolated label file?)")
    bad = rounded[~np.isin(rounded, list(edition.labels))]
    if bad.size:
        raise CaseError(f"{where}: label value {bad[0]:g} is not a {edition.title} label ({_values(edition)}); "
                        "is this a segmentation of another edition? (preprocess.edition, predict/scorer --labels)")
    labels = data.astype(np.uint8) if np.issubdtype(data.dtype, np.integer) else np.rint(data).astype(np.uint8)
    return edition.to_2024(labels)


def _values(edition: Edition) -> str:
    return ", ".join(str(v) for v in sorted(edition.labels))
