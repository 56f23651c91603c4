"""A throwaway PostgreSQL cluster from the machine's server binaries, for benchmarks and tests: created in a
temporary folder, listening on a free loopback port only, removed when done. No service, no password (trust
on loopback), fsync off: for measuring and testing, never for data that matters.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def server_binaries() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` holding initdb (Debian's layout), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start a cluster and yield its maintenance URL (postgresql://postgres@127.0.0.1:PORT/postgres)."""
    binaries = server_binaries()
    if binaries is None:
        raise FileNotFoundError("no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
    # initdb refuses to run as root: the cluster then belongs to the `postgres` user the package creates.
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="recsys-postgres-"))
    if as_owner:
        shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = folder / "data"
    try:
        subprocess.run([*as_owner, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True)
        subprocess.run([*as_owner, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w",
                        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_owner, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
