"""What the tests share: the repository root, the one tiny configuration, case and checkout writers.

Fixtures live in conftest.py and are built from these; tests import this module, never conftest.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import yaml

from brats import MODALITIES, SEG
from nifti import write_nifti
from params import apply_overrides

ROOT = Path(__file__).resolve().parents[1]


def bench_module(name: str):
    """A script of bench/ as a module: the statistics and checks it shares with the tests."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
SMALL_GRID = (40, 48, 40)   # 4 mm voxels: a whole head in a few thousand voxels
SMALL_SPACING = 4.0

# The tiny configuration every end-to-end test runs (seconds on 2 cores), as `dvc exp run -S` keys.
# Adam's keys stay `tuned` here, as in params.yaml; tests that train without tuning add ADAM.
TINY = {
    "synthesize.patients": 8, "synthesize.visits": 1, "synthesize.grid": list(SMALL_GRID),
    "synthesize.spacing_mm": SMALL_SPACING, "synthesize.workers": 1,
    "preprocess.workers": 1, "preprocess.val_fraction": 0.25, "preprocess.test_fraction": 0.25,
    "model.base_width": 4, "model.max_width": 16, "model.depth": 3, "model.deep_supervision": True,
    "tune.trials": 2, "tune.startup_trials": 1, "tune.epochs": 1,
    "train.epochs": 2, "train.iterations_per_epoch": 2, "train.batch_size": 2, "train.patch": [16, 16, 16],
    "train.workers": 0, "train.val_every": 1, "train.val_batch": 4, "train.mlflow": False,
    "train.wandb": "disabled", "train.deterministic": True,
    "train.compile": False,     # compiling takes longer than these runs (tests/test_train.py compiles once)
    "evaluate.overlays": 1, "evaluate.compile": False,
}
ADAM = {"lr": 0.003, "weight_decay": 1e-5, "beta1": 0.9, "beta2": 0.999}


def write_params(path: Path, overrides: dict) -> Path:
    """The repository's params.yaml with dotted `overrides` applied, written to `path`."""
    raw = apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def checkout(dest: Path, overrides: dict) -> Path:
    """A copy of src/ and params.yaml (with `overrides`) in `dest`, as a fresh clone would have."""
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(dest / "params.yaml", overrides)
    return dest


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
