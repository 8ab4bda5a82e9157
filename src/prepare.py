"""What turns a raw BraTS case into the network's input, for training (preprocess) and prediction
(predict) alike: find the case folders, reorient to RAS, crop to the head, z-score inside the head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats import is_case_dir
from errors import UserError
from geometry import Box, crop, foreground_box, to_canonical
from nifti import CaseError, RawCase


@dataclass(frozen=True)
class Listing:
    """Every entry of an input folder: the case folders, and why each other entry is not one."""
    cases: list[Path]
    misnamed: dict[str, str]   # folders named like a case that do not follow the BraTS id pattern
    ignored: dict[str, str]    # anything else (files, other folders)


def find_cases(folder: Path, hint: str) -> Listing:
    """Case folders (BraTS-GLI-PPPPP-VVV) directly under `folder`, sorted by name, and the other
    entries with the reason they are left out; `hint` says how the user points at another folder."""
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist or is not a folder; {hint}")
    cases, misnamed, ignored = [], {}, {}
    for entry in sorted(folder.iterdir()):
        if is_case_dir(entry):
            cases.append(entry)
        elif entry.is_dir() and entry.name.startswith("BraTS-"):
            misnamed[entry.name] = (f"{entry.name}: named like a case but not BraTS-GLI-PPPPP-VVV (5-digit "
                                    "patient, 3-digit visit); rename the folder and its files")
        else:
            ignored[entry.name] = "not a case folder" if entry.is_dir() else "a file, not a case folder"
    if not cases and not misnamed:
        raise UserError(f"no case folders named like BraTS-GLI-00000-100 in {folder}; {hint}")
    return Listing(cases, misnamed, ignored)


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


def prepare(raw: RawCase) -> tuple[np.ndarray, np.ndarray | None, Box, np.ndarray]:
    """Reorient to RAS, crop to the head, z-score, round to float16: the network's input, as training
    and prediction both need it (so predict sees exactly what evaluate reads back from the preprocessed
    store). Returns images (4, x, y, z) float16, labels (x, y, z) or None, the crop box and the
    canonical affine."""
    images, affine = to_canonical(raw.images, raw.affine)
    labels = to_canonical(raw.seg, raw.affine)[0] if raw.seg is not None else None
    try:
        box = foreground_box(images, labels)
    except ValueError as e:
        raise CaseError(f"{raw.name}: {e}") from None
    images = crop(images, box)
    labels = np.ascontiguousarray(crop(labels, box)) if labels is not None else None
    normalised = zscore(images, np.any(images != 0, axis=0))
    with np.errstate(over="ignore"):
        stored = normalised.astype(INPUT_DTYPE)
    if not np.isfinite(stored).all():
        raise CaseError(f"{raw.name}: an intensity lies over {np.finfo(INPUT_DTYPE).max:g} standard deviations "
                        "from its modality's mean inside the head; check the scan for corrupt voxels")
    return stored, labels, box, affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) along the array axes of an affine."""
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(0)).round(6))
