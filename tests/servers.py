"""Servers the tests start for real (Airflow, MLflow, the user page): free loopback ports, readiness, clean stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], object], what: str, timeout: float, every: float = 1.0):
    """check()'s first truthy value, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:  # a server still starting refuses or resets connections
            value = None
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not after {timeout:.0f}s")


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def listens(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


@contextmanager
def server(command: list[str], env: dict, ready: str | Callable[[], bool] | None, log: Path,
           timeout: float = 180) -> Iterator[subprocess.Popen]:
    """Run `command` in its own process group, output to `log`, until `ready` (a URL answering 200, or a check;
    None: at once); stop the whole group after."""
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   start_new_session=True)
        try:
            if ready is not None:
                check = (lambda: answers(ready)) if isinstance(ready, str) else ready
                wait_until(lambda: process.poll() is not None or check(), f"{command[:3]} ready", timeout)
            assert process.poll() is None, f"{command[:3]} exited: {log.read_text()[-3000:]}"
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def worker_name() -> str:
    """`[core] hostname_callable` for the Celery test: each worker on this one host names itself, so a task
    instance's hostname tells which worker ran it."""
    return os.environ.get("RECSYS_WORKER_NAME") or socket.getfqdn()
