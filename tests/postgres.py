"""A throwaway PostgreSQL 15 server for the tests that need the database a team would share (Optuna's
study, MLflow's backend store): initdb into a fresh folder, pg_ctl start on 127.0.0.1 and a free
port, stopped and removed at the end. As root (initdb refuses to run as root) the server runs as
the `postgres` user the Debian package creates. Tests skip with the reason where no server can be
made (no initdb, no such user)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin"), Path("/usr/lib/postgresql/17/bin"))


def bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    return next((d for d in BIN_DIRS if (d / "initdb").exists()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server():
    """Yields the SQLAlchemy URL of a new server's `postgres` database, or a str starting with
    "skip: " saying why there is none."""
    binaries = bin_dir()
    if binaries is None:
        yield "skip: no PostgreSQL initdb on this machine (/usr/lib/postgresql/*/bin)"
        return
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="brats-pg-")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            yield "skip: running as root and there is no `postgres` user to run the server as"
            shutil.rmtree(root, ignore_errors=True)
            return
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log, port = Path(root) / "data", Path(root) / "server.log", free_port()
    try:
        subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                        "-o", f"-h 127.0.0.1 -p {port} -k {root} -F", "start"],
                       check=True, capture_output=True, timeout=120)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        for _ in range(20):         # the postmaster may still hold files for a moment
            try:
                shutil.rmtree(root)
                break
            except OSError:
                time.sleep(0.2)
