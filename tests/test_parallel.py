"""parallel.run_each's one-line reasons when a worker pool breaks (a worker killed by the system is
tested end to end in test_preprocess: test_killed_worker_ends_the_stage_with_the_case_it_held)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT


def test_reason_follows_the_exit_codes():
    from parallel import _broken
    killed = _broken("preprocess", ["A", "B"], [-9, -15])          # OOM killer, then the executor's SIGTERM
    assert "killed by the system" in killed and "A or B" in killed and "preprocess.workers" in killed
    failed = _broken("synthesize", ["A"], [1, -15])                 # Python exited with an error
    assert "exited with an error (code 1)" in failed and "synthesize.workers: 1" in failed
    assert "killed" not in failed
    assert "killed by the system" in _broken("synthesize", ["A"], [None, None])   # nothing known: as before


def test_a_script_without_a_main_guard_is_told_so(tmp_path):
    """Spawned workers import the script that started them: without `if __name__ == "__main__":`
    each worker fails at start. That used to be reported as a worker killed for lack of memory."""
    script = tmp_path / "no_guard.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT / 'src')!r})\n"
                      "from errors import UserError\nfrom parallel import run_each\n"
                      "def double(x):\n    return 2 * x\n"
                      "try:\n    print(list(run_each(double, [1, 2, 3], 2, str, 'synthesize')))\n"
                      "except UserError as e:\n    print('error:', e)\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "error: a synthesize worker exited with an error" in done.stdout, done.stdout + done.stderr[-2000:]
    assert '`if __name__ == "__main__":`' in done.stdout and "memory" not in done.stdout


def test_ctrl_c_while_a_worker_starts_is_not_lost(monkeypatch):
    """Ctrl-C that lands while the main process starts a worker (which must begin with Ctrl-C off)
    still stops the run: it waits until the worker has started, it is not dropped."""
    import os
    import signal
    import time
    from concurrent.futures import ProcessPoolExecutor

    import parallel
    started = ProcessPoolExecutor.submit

    def submit(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)          # the key press, during the start
        return started(self, *args, **kwargs)
    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    begun = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        list(parallel.run_each(time.sleep, [2.0] * 4, 2, str, "preprocess"))
    assert time.monotonic() - begun < 3.0             # stopped, not after the 4 s the jobs take
