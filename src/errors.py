"""The one exception type a user can cause, and how a stage reports it."""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input or params: the message says what was wrong, where, and what to do."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); report a UserError as one clear line and exit 1, without a traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
