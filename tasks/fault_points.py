"""Named points where a test can make a step fail, to prove that a retry ends where one clean run would.

`RECSYS_FAULT_POINT=register.after_version` makes the process stop at that point: killed at once with SIGKILL
(the default, as an out-of-memory kill or a lost node would) or, with `RECSYS_FAULT_MODE=raise`, by an
InjectedFault exception (as a transient server error would). Unset, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

POINT_ENV, MODE_ENV = "RECSYS_FAULT_POINT", "RECSYS_FAULT_MODE"


class InjectedFault(RuntimeError):
    """The failure a test asked for at a named point."""


def fault_point(name: str) -> None:
    if os.environ.get(POINT_ENV) != name:
        return
    if os.environ.get(MODE_ENV, "kill") == "raise":
        raise InjectedFault(f"fault injected at {name} ({POINT_ENV})")
    os.kill(os.getpid(), signal.SIGKILL)
