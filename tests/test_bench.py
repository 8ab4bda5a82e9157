"""The benchmarks' quick CPU mode runs, so that bench/ never rots (it measures nothing here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT



@pytest.mark.slow
def test_quick_benchmarks_run():
    done = subprocess.run([sys.executable, "bench/run.py", "--quick"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("train step, ours", "preprocess", "loader, 2 workers", "mirror=True"):
        assert row in done.stdout
