"""The BraTS 2024 GLI edition in one place: file layout, labels and evaluated regions.

See ../shared/BRATS2024.md. BraTS <= 2021 used label 4 for enhancing tumour; 2024 uses 3 and adds
4 = resection cavity. Everything else in the code base reads these tables instead of writing numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

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
