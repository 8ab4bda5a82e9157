"""The one exception type a user can cause, and how a stage reports errors: one line, no traceback."""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input or params: the message says what was wrong, where, and what to do."""


class SetupError(UserError):
    """The machine cannot run what params ask (no C++ compiler for torch.compile): no other case
    would fare better, so a run over many cases stops at the first."""


def describe_os_error(e: OSError) -> str:
    """`<path>: <reason>` for an error of the machine: a full disk, a read-only or missing folder…"""
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    reason = e.strerror or str(e)
    return f"{paths}: {reason}" if paths else reason


RESUME = ("nothing half-written was kept; run the same command again to continue (the train stage resumes "
          "from its last finished epoch)")


def run_stage(main: Callable[[], None], interrupted: str = RESUME) -> None:
    """Run a stage's main(); report a UserError or an error of the machine (disk, folders, permissions)
    as one clear line and exit 1, without a traceback; Ctrl-C as one line (`interrupted`: what a
    rerun does) and exit 130."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"error: {describe_os_error(e)} (check free space, permissions and the path)", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        sys.exit(130)
