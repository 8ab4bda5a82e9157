"""The data stages run as users run them: `python src/<stage>.py` from the repository root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import TINY, checkout


def run(repo: Path, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"src/{stage}.py"], cwd=repo, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_synthesize_then_preprocess(tmp_path):
    repo = checkout(tmp_path, TINY)
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
    repo = checkout(tmp_path, {"synthesize.patients": -3})
    done = run(repo, "synthesize")
    assert done.returncode == 1
    assert "error: synthesize.patients: -3 is out of range" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (repo / "data").exists()


@pytest.mark.slow
def test_missing_raw_folder_is_explained(tmp_path):
    repo = checkout(tmp_path, {"paths.raw_dir": "data/BraTS2024"})
    done = run(repo, "preprocess")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "data/BraTS2024 does not exist" in done.stderr


@pytest.mark.slow
def test_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    repo = checkout(tmp_path, {**TINY, "paths.preprocessed_dir": "blocker/pre"})
    assert run(repo, "synthesize").returncode == 0
    (repo / "blocker").write_text("a file where a folder should be")
    done = run(repo, "preprocess")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write the preprocessed data: ") and "blocker" in last, last


@pytest.mark.slow
def test_a_spacing_of_zero_is_one_line_naming_the_key(tmp_path):
    repo = checkout(tmp_path, {**TINY, "preprocess.spacing_mm": 0})
    done = run(repo, "preprocess")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: preprocess.spacing_mm: 0.0 is out of range; must be ≥ 0.1"
    assert not (repo / "data").exists()
