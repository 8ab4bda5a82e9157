"""The BraTS 2024 GLI edition in one place: file layout, labels and evaluated regions.

See ../shared/BRATS2024.md. BraTS <= 2021 used label 4 for enhancing tumour; 2024 uses 3 and adds
4 = resection cavity. Everything else in the code base reads these tables instead of writing numbers.
"""

from __future__ import annotations

import re
from functools import reduce
from operator import or_
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    import torch

Array = Union[np.ndarray, "torch.Tensor"]

EDITION = "BraTS-GLI-2024"

# Modality suffixes in the order of the image channels.
MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
SEG = "seg"

# label value -> name
LABELS: dict[int, str] = {
    0: "background",
    1: "NETC",   # non-enhancing tumour core
    2: "SNFH",   # surrounding non-enhancing FLAIR hyperintensity
    3: "ET",     # enhancing tissue
    4: "RC",     # resection cavity
}
MAX_LABEL = max(LABELS)

# region name -> labels it contains (RC is not part of WT)
REGIONS: dict[str, tuple[int, ...]] = {
    "ET": (3,),
    "TC": (1, 3),
    "WT": (1, 2, 3),
    "NETC": (1,),
    "SNFH": (2,),
    "RC": (4,),
}

# The network's output channels, one sigmoid each (nnU-Net's region-based BraTS setup). A label map is
# rebuilt by painting, in this order, 2 where WT, 1 where TC, 3 where ET, 4 where RC: nested regions
# from the outside in, then RC last (it lies outside WT; where both fire, RC wins).
MODEL_REGIONS: tuple[str, ...] = ("WT", "TC", "ET", "RC")
PAINT: tuple[tuple[str, int], ...] = (("WT", 2), ("TC", 1), ("ET", 3), ("RC", 4))

CASE_PATTERN = re.compile(r"^(?P<patient>BraTS-[A-Z]+-\d{5})-(?P<visit>\d{3})$")


def case_id(patient: int, visit: int) -> str:
    """`BraTS-GLI-PPPPP-VVV` for patient number and visit number (visits start at 100)."""
    return f"BraTS-GLI-{patient:05d}-{visit:03d}"


def patient_of(case: str) -> str:
    """The patient part of a case id: `BraTS-GLI-00012-101` -> `BraTS-GLI-00012`."""
    m = CASE_PATTERN.match(case)
    if m is None:
        raise ValueError(f"{case!r} is not a BraTS case id (BraTS-GLI-PPPPP-VVV)")
    return m["patient"]


def is_case_dir(path: Path) -> bool:
    return path.is_dir() and CASE_PATTERN.match(path.name) is not None


def case_file(case_dir: Path, suffix: str) -> Path:
    """`<case_dir>/<case>-<suffix>.nii.gz` (an uncompressed `.nii` is accepted where it exists)."""
    gz = case_dir / f"{case_dir.name}-{suffix}.nii.gz"
    plain = gz.with_suffix("")
    return plain if not gz.exists() and plain.exists() else gz


def region_mask(labels: Array, region: str) -> Array:
    """Boolean mask of `region` in a label map (numpy array or torch tensor)."""
    return reduce(or_, (labels == value for value in REGIONS[region]))


def labels_to_regions(labels: Array, regions: tuple[str, ...] = MODEL_REGIONS) -> Array:
    """(…spatial) label map -> (R, …spatial) boolean region masks, stacked on a new first axis."""
    masks = [region_mask(labels, r) for r in regions]
    if isinstance(labels, np.ndarray):
        return np.stack(masks)
    import torch  # here, so that the data stages never load torch
    return torch.stack(masks)


def regions_to_labels(masks: np.ndarray, paint: tuple[tuple[str, int], ...] = PAINT) -> np.ndarray:
    """(R, …spatial) boolean masks in MODEL_REGIONS order -> uint8 label map (see PAINT; `paint`
    without RC for an edition that has no label for it, so that a voxel both WT and RC fire on
    stays tumour)."""
    labels = np.zeros(masks.shape[1:], np.uint8)
    for region, value in paint:
        labels[masks[MODEL_REGIONS.index(region)]] = value
    return labels
