"""The benchmarks' quick CPU mode runs, so that bench/ never rots (it measures nothing here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_quick_benchmarks_run():
    # no timeout: a loaded machine may take long, and speed is not what this checks
    done = subprocess.run([sys.executable, "bench/run.py", "--quick"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("train step, ours", "preprocess", "loader, 2 workers", "mirror=True"):
        assert row in done.stdout


@pytest.mark.slow
def test_scale_benchmark_runs_and_writes_its_figures(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, "bench/scale.py", "--cases", "2", "--workers", "2", "--grid", "48", "56",
                           "48", "--spacing", "4", "--patch", "32", "--batches", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["loader"]) == {"none, 2 workers", "light, 2 workers", "full, 2 workers"}
    assert result["bytes per case"]["preprocessed / raw"] < 1.5          # the compact store is compact
    assert set(result["storage choices"]) == {"npy float32", "npy float16", "blosc2 LZ4 float16",
                                              "blosc2 ZSTD float16"}
    assert "extrapolated to 1350 cases, 16 cores" in result
