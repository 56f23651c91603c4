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


@contextmanager
def server(command: list[str], env: dict, ready_url: str, log: Path, timeout: float = 180) -> Iterator[None]:
    """Run `command` (in its own process group, output to `log`) until ready_url answers 200; stop it after."""
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   start_new_session=True)
        try:
            wait_until(lambda: process.poll() is not None or answers(ready_url), f"{command[:3]} at {ready_url}",
                       timeout)
            assert process.poll() is None, f"{command[:3]} exited: {log.read_text()[-3000:]}"
            yield
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
