"""Run one function over many cases on worker processes, as synthesize and preprocess both do."""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterator, TypeVar

from errors import UserError

Job = TypeVar("Job")
Result = TypeVar("Result")


def run_each(work: Callable[[Job], Result], jobs: list[Job], workers: int, name: Callable[[Job], str],
             stage: str) -> Iterator[Result]:
    """Results of `work(job)` as they finish: in this process for one worker, else on `workers`
    spawned processes with at most `workers` jobs in flight, so a worker the system kills is pinned
    to the cases it held and reported in one line. Each job must not depend on the others: outputs
    are then the same whatever the number of workers."""
    jobs = list(jobs)
    if workers <= 1:
        yield from map(work, jobs)
        return
    previous_hook = threading.excepthook
    threading.excepthook = _quiet_after_a_break(previous_hook)
    try:
        yield from _on_pool(work, jobs, workers, name, stage)
    finally:
        threading.excepthook = previous_hook


def _quiet_after_a_break(previous):
    """Python 3.11's executor may fail in its own manager thread while it winds down a broken pool
    (it iterates its worker table while a worker is still being started): a traceback about our
    already-reported broken pool, printed by that thread. Keep it off the console."""
    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ != "_ExecutorManagerThread":
            previous(args)
    return hook


def _ignore_ctrl_c() -> None:
    """Workers leave Ctrl-C to the main process, which ends them; else each prints a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _submit(pool: ProcessPoolExecutor, work: Callable, job) -> Future:
    """pool.submit, which may start a worker: with Ctrl-C blocked while it does, so that a worker
    (and the executor's thread) starts with it blocked and never takes the terminal's Ctrl-C, which
    the main process handles. Blocked rather than ignored: a Ctrl-C that lands meanwhile waits for
    the main process instead of being lost."""
    if threading.current_thread() is not threading.main_thread():
        return pool.submit(work, job)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(work, job)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _exit_codes(pool: ProcessPoolExecutor, wait_s: float = 2.0) -> list[int | None]:
    """Exit codes of the pool's workers, given `wait_s` in all to end (a worker that failed may
    still be printing its error when the pool breaks); None for those still running."""
    deadline = time.monotonic() + wait_s
    workers = list(dict(getattr(pool, "_processes", None) or {}).values())
    for process in workers:
        process.join(max(0.0, deadline - time.monotonic()))
    return [process.exitcode for process in workers]


def _end_workers(pool: ProcessPoolExecutor) -> None:
    for process in dict(getattr(pool, "_processes", None) or {}).values():
        process.kill()


def _on_pool(work: Callable[[Job], Result], jobs: list[Job], workers: int, name: Callable[[Job], str],
             stage: str) -> Iterator[Result]:
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_ignore_ctrl_c) as pool:
        pending: dict[Future, str] = {}
        try:
            while jobs or pending:
                while jobs and len(pending) < workers:
                    job = jobs.pop(0)
                    pending[_submit(pool, work, job)] = name(job)
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    del pending[future]
                    yield result
        except KeyboardInterrupt:       # Ctrl-C: the stage reports it in one line (errors.run_stage)
            _end_workers(pool)
            raise
        except BrokenProcessPool:
            codes = _exit_codes(pool)
            # Python 3.11's executor then joins the surviving workers, which wait for work forever:
            # end them, or leaving this block would hang.
            _end_workers(pool)
            raise UserError(_broken(stage, sorted(pending.values()), codes)) from None
        finally:
            for future in pending:
                future.cancel()


def _broken(stage: str, held: list[str], exit_codes: list[int | None]) -> str:
    """Why a pool broke, from its workers' exit codes: a SIGKILL (the OOM killer's), or an error exit
    by Python itself, which is how a spawned worker that cannot start ends (the executor then sends
    the others SIGTERM)."""
    errors = [code for code in exit_codes if code and code > 0]
    if errors and -signal.SIGKILL not in exit_codes:
        return (f"a {stage} worker exited with an error (code {errors[0]}) before it finished {' or '.join(held)}: "
                f"it could not start. Nothing of it was kept. Set {stage}.workers: 1 to see the error here; a "
                "Python script that runs this stage must keep its code under `if __name__ == \"__main__\":`, "
                "since workers are spawned and import it")
    return (f"a {stage} worker died while it held {' or '.join(held)}: killed by the system, most likely for "
            f"lack of memory. Nothing of it was kept; lower {stage}.workers (each holds one case in memory) "
            "and run again")
