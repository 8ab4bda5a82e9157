"""Shared fixtures: small synthetic cases written in the BraTS layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from brats import MODALITIES, SEG
from nifti import write_nifti
from params import load_params
from synthesize import make_case

ROOT = Path(__file__).resolve().parents[1]
SMALL_GRID = (40, 48, 40)   # 4 mm voxels: a whole head in a few thousand voxels
SMALL_SPACING = 4.0


def write_case(folder: Path, name: str, images: np.ndarray, seg: np.ndarray | None,
               affine: np.ndarray) -> Path:
    """Write one case folder in the BraTS layout and return it."""
    case_dir = folder / name
    case_dir.mkdir(parents=True, exist_ok=True)
    for m, mod in enumerate(MODALITIES):
        write_nifti(case_dir / f"{name}-{mod}.nii.gz", images[m], affine)
    if seg is not None:
        write_nifti(case_dir / f"{name}-{SEG}.nii.gz", seg, affine)
    return case_dir


@pytest.fixture(scope="session")
def small_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, affine) of one small synthetic case with every label present."""
    for patient in range(50):
        images, labels, affine = make_case(7, patient, 0, SMALL_GRID, SMALL_SPACING)
        if set(np.unique(labels)) == {0, 1, 2, 3, 4}:
            return images, labels, affine
    raise AssertionError("no small synthetic case holds all five labels")


@pytest.fixture
def raw_dir(tmp_path: Path, small_case) -> Path:
    """A raw folder with four valid cases of three patients (one patient has two visits)."""
    images, labels, affine = small_case
    folder = tmp_path / "raw"
    for i, name in enumerate(["BraTS-GLI-00001-100", "BraTS-GLI-00001-101", "BraTS-GLI-00002-100",
                              "BraTS-GLI-00003-100"]):
        write_case(folder, name, np.roll(images, i, axis=1), np.roll(labels, i, axis=0), affine)
    return folder


@pytest.fixture
def params_for(tmp_path: Path):
    """Build Params from the repository's params.yaml with paths into tmp_path and overrides."""
    def build(**overrides):
        params_file = tmp_path / "params.yaml"
        shutil.copy(ROOT / "params.yaml", params_file)
        dotted = {k.replace("__", "."): v for k, v in overrides.items()}
        return load_params(params_file, dotted)
    return build
