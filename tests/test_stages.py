"""The data stages run as users run them: `python src/<stage>.py` from the repository root."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def checkout(tmp_path: Path, edit) -> Path:
    """A copy of src/ and params.yaml (edited) in tmp_path, as a fresh clone would have."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def run(repo: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"src/{stage}.py"], cwd=repo, capture_output=True, text=True,
                          timeout=600)


def tiny(params: dict) -> None:
    params["synthesize"].update(patients=4, visits=2, grid=[40, 48, 40], spacing_mm=4.0)
    params["preprocess"].update(val_fraction=0.25, test_fraction=0.25)


@pytest.mark.slow
def test_synthesize_then_preprocess(tmp_path):
    repo = checkout(tmp_path, tiny)
    done = run(repo, "synthesize")
    assert done.returncode == 0, done.stderr
    cases = sorted(p.name for p in (repo / "data" / "synthetic").iterdir())
    assert len(cases) >= 4
    done = run(repo, "preprocess")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((repo / "data" / "preprocessed" / "manifest.json").read_text())
    assert sorted(manifest["cases"]) == cases
    assert "preprocess" in done.stderr  # the progress bar


@pytest.mark.slow
def test_bad_params_stop_before_work_with_one_clear_line(tmp_path):
    repo = checkout(tmp_path, lambda p: p["synthesize"].update(patients=-3))
    done = run(repo, "synthesize")
    assert done.returncode == 1
    assert "error: synthesize.patients: -3 is out of range" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (repo / "data").exists()


@pytest.mark.slow
def test_missing_raw_folder_is_explained(tmp_path):
    repo = checkout(tmp_path, lambda p: p["paths"].update(raw_dir="data/BraTS2024"))
    done = run(repo, "preprocess")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "data/BraTS2024 does not exist" in done.stderr
