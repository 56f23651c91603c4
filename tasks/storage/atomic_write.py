"""Write a directory beside its final place and swap it in, so readers never see half of it, nor none.

On Linux the swap is one `renameat2(RENAME_EXCHANGE)` call: at every instant the final path holds either the
old directory or the new one, whole. Where the kernel or filesystem lacks it, two renames stand in, with a
gap of microseconds in which the path is absent (logged once).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

STAGING, RETIRED = ".staging-", ".retired-"  # prefixes of the siblings a swap works in
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_libc = ctypes.CDLL(None, use_errno=True)
_warned: list[bool] = []


def exchange(a: Path, b: Path) -> None:
    """Swap two existing paths atomically (renameat2 RENAME_EXCHANGE); OSError where unsupported."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available in this C library")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def swap_in(staging: Path, final: Path) -> None:
    """Put `staging` at `final`; what was at `final` is deleted. Atomic for readers (see the module doc)."""
    if not final.exists():
        os.rename(staging, final)
        return
    try:
        exchange(staging, final)
        shutil.rmtree(staging)  # now the old content
        return
    except OSError as error:
        if error.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        if not _warned:
            _warned.append(True)
            log.warning("atomic swap unsupported here (%s): two renames stand in, %s is absent for a moment",
                        error.strerror, final)
    retired = final.parent / f"{RETIRED}{final.name}-{uuid.uuid4().hex[:8]}"
    os.replace(final, retired)
    os.replace(staging, final)
    shutil.rmtree(retired, ignore_errors=True)


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `final`; on success it replaces `final`, on error it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f"{STAGING}{final.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, final)


def leftovers(final: Path) -> list[Path]:
    """The staging and swapped-out siblings of `final` that killed or failed writes left behind."""
    if not final.parent.is_dir():
        return []
    return sorted(p for p in final.parent.iterdir()
                  if p.name.startswith((f"{STAGING}{final.name}-", f"{RETIRED}{final.name}-")))
