"""Read and write files so that no reader ever sees half of one: write beside the target, then rename."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from errors import UserError


TMP_MARK = ".tmp"      # atomic_write's temporary files: `.<name>.tmp<pid>` beside the target


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` for a temporary file next to `path`, then move it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise with_path(e, path) from None
    finally:
        tmp.unlink(missing_ok=True)


def with_path(e: OSError, path: Path) -> OSError:
    """`e` naming `path` where it names no file: a write into an open file (a full disk) fails
    without one, and the user needs to know which disk."""
    return e if e.filename is not None else OSError(e.errno, e.strerror or str(e), str(path))


def remove_stale_writes(folder: Path) -> None:
    """The temporary files of atomic_write that a killed process left in `folder`."""
    for stale in folder.glob(f".*{TMP_MARK}[0-9]*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; when the block ends without an error, it
    replaces `final` (an older `final` is moved aside first and then removed). On an error `final` is
    untouched and the temporary folder removed; one left by a killed run is removed by the next."""
    for stale in (*final.parent.glob(f".tmp-{final.name}-*"), *final.parent.glob(f".old-{final.name}-*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def check_writable(folder: Path, purpose: str) -> None:
    """Fail now, not after hours of work, when `folder` cannot be made or written; `purpose` says what
    goes there and what to do."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to {folder} ({e.strerror or e}); {purpose}") from None


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, obj: object) -> None:
    """Indented JSON with sorted keys, so the bytes depend only on the content."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: Path, what: str, stage: str) -> dict:
    """A JSON file that `stage` writes; if it is missing or broken, say which stage makes it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found ({what}): run `dvc repro {stage}` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): rerun `dvc repro -f {stage}`") from None


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
