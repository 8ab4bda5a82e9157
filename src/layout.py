"""The preprocessed dataset on disk, as the preprocess stage writes it and every later stage reads it.

    <preprocessed_dir>/cases/<case>/image.npy   (4, X, Y, Z) float32, channels in brats.MODALITIES order
    <preprocessed_dir>/cases/<case>/label.npy   (X, Y, Z) uint8 labels 0..4
    <preprocessed_dir>/manifest.json            per case: patient, crop box, shapes, affine, spacing
    <preprocessed_dir>/splits.json              {"train", "val", "test"}: case names, grouped by patient
    <preprocessed_dir>/report.json              counts and skipped cases

The arrays are plain `.npy`, memory-mapped by readers, so a patch is cut without reading the case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from errors import UserError
from files import read_json

CASES_DIR = "cases"
IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
MANIFEST_FILE = "manifest.json"
SPLITS_FILE = "splits.json"
REPORT_FILE = "report.json"


def case_folder(pre_dir: Path, case: str) -> Path:
    return pre_dir / CASES_DIR / case


def load_manifest(pre_dir: Path) -> dict[str, dict]:
    """Manifest entries by case name."""
    return read_json(pre_dir / MANIFEST_FILE, "the case manifest", stage="preprocess")["cases"]


def load_split(pre_dir: Path, split: str) -> list[str]:
    """Case names of one split ("train", "val" or "test")."""
    path = pre_dir / SPLITS_FILE
    cases = read_json(path, "the train/val/test split", stage="preprocess")[split]
    if not cases:
        raise UserError(f"the {split} split in {path} is empty; add cases or change "
                        "preprocess.val_fraction / test_fraction")
    return cases


def open_case(pre_dir: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped (4, X, Y, Z) float32 image and (X, Y, Z) uint8 labels of one case."""
    folder = case_folder(pre_dir, case)
    try:
        return (np.load(folder / IMAGE_FILE, mmap_mode="r"), np.load(folder / LABEL_FILE, mmap_mode="r"))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"preprocessed case {folder} is missing or damaged ({e}); "
                        "rerun `dvc repro -f preprocess`") from None
