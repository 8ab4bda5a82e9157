"""Fixtures: small synthetic cases in the BraTS layout, and the tiny configuration's data and params."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from helpers import ADAM, SMALL_GRID, SMALL_SPACING, TINY, write_case, write_params
from params import load_params
from synthesize import make_case

# A shell starts a background job (`cmd &`, nohup) with Ctrl-C ignored, and Python then never raises
# KeyboardInterrupt; the Ctrl-C tests (tests/test_parallel.py, tests/test_preprocess.py) need the
# terminal's behaviour, here and in the stages they start, which get it back when they exec.
signal.signal(signal.SIGINT, signal.default_int_handler)


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


def dotted(overrides: dict) -> dict:
    """Keyword-style overrides (`train__epochs=3`) as params keys (`train.epochs`)."""
    return {k.replace("__", "."): v for k, v in overrides.items()}


@pytest.fixture
def params_for(tmp_path: Path):
    """Params from the repository's params.yaml, with paths into tmp_path and overrides."""
    def build(**overrides):
        return load_params(write_params(tmp_path / "params.yaml", {}), dotted(overrides))
    return build


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny configuration's data, synthesised and preprocessed: a folder with params.yaml and data/."""
    from preprocess import preprocess
    from synthesize import synthesize
    root = tmp_path_factory.mktemp("tiny")
    params = load_params(write_params(root / "params.yaml", TINY))
    synthesize(params.synthesize, params.base.seed, params.paths.synthetic_dir)
    preprocess(params)
    return root


@pytest.fixture(scope="session")
def tiny_data_resampled(tiny_data, tmp_path_factory) -> Path:
    """The tiny configuration's synthetic cases (4 mm) preprocessed at 5 mm (`preprocess.spacing_mm`)."""
    from preprocess import preprocess
    root = tmp_path_factory.mktemp("tiny5mm")
    params = load_params(write_params(root / "params.yaml", {
        **TINY, "preprocess.spacing_mm": 5.0, "paths.raw_dir": str(tiny_data / "data" / "synthetic"),
        "paths.synthetic_dir": str(tiny_data / "data" / "synthetic")}))
    preprocess(params)
    return root


@pytest.fixture
def tiny_params(tiny_data, tmp_path):
    """Params for a tiny training run (Adam's keys set): data from tiny_data (or another such root
    given as `data=`), outputs in tmp_path."""
    def build(data: Path = tiny_data, **overrides):
        paths = {"paths.preprocessed_dir": str(data / "data" / "preprocessed"),
                 "paths.models_dir": str(tmp_path / "models"), "paths.metrics_dir": str(tmp_path / "metrics"),
                 "paths.resume_dir": str(tmp_path / "checkpoints"),
                 "paths.predictions_dir": str(tmp_path / "predictions"), "paths.tune_dir": str(tmp_path / "tune"),
                 "paths.live_dir": str(tmp_path / "dvclive"), "paths.model_card": str(tmp_path / "MODEL_CARD.md")}
        return load_params(data / "params.yaml", {**ADAM, **paths, **dotted(overrides)})
    return build


@pytest.fixture(scope="session")
def postgres_url():
    """SQLAlchemy URL of a throwaway PostgreSQL server on 127.0.0.1 (tests/postgres.py)."""
    from postgres import postgres_server
    with postgres_server() as url:
        if url.startswith("skip: "):
            pytest.skip(url.removeprefix("skip: "))
        yield url
