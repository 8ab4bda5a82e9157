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


TINY_TRAIN = {
    "synthesize.patients": 8, "synthesize.visits": 1, "synthesize.grid": [40, 48, 40], "synthesize.spacing_mm": 4.0,
    "preprocess.workers": 1, "preprocess.val_fraction": 0.25, "preprocess.test_fraction": 0.25,
    "model.base_width": 4, "model.max_width": 16, "model.depth": 3, "model.deep_supervision": True,
    "train.epochs": 2, "train.iterations_per_epoch": 2, "train.batch_size": 2, "train.patch": [16, 16, 16],
    "train.workers": 0, "train.val_every": 1, "train.val_batch": 4, "train.mlflow": False,
    "lr": 0.003, "weight_decay": 1e-5, "beta1": 0.9, "beta2": 0.999,
    "train.wandb": "disabled", "train.deterministic": True,
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A preprocessed tiny dataset (8 patients at 4 mm): a folder with params.yaml and data/."""
    from preprocess import preprocess
    from synthesize import synthesize
    root = tmp_path_factory.mktemp("tiny")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    params = load_params(root / "params.yaml", TINY_TRAIN)
    synthesize(params.synthesize, params.base.seed, params.paths.synthetic_dir)
    preprocess(params)
    return root


@pytest.fixture
def tiny_params(tiny_data, tmp_path):
    """Params for a tiny training run: data from tiny_data, outputs in this test's tmp_path."""
    def build(**overrides):
        dotted = {**TINY_TRAIN, "paths.preprocessed_dir": str(tiny_data / "data" / "preprocessed"),
                  "paths.models_dir": str(tmp_path / "models"), "paths.metrics_dir": str(tmp_path / "metrics"),
                  "paths.resume_dir": str(tmp_path / "checkpoints"),
                  "paths.predictions_dir": str(tmp_path / "predictions"), "paths.tune_dir": str(tmp_path / "tune"),
                  **{k.replace("__", "."): v for k, v in overrides.items()}}
        return load_params(tiny_data / "params.yaml", dotted)
    return build
