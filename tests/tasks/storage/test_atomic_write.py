import os
import threading

import pytest

from tasks.storage.atomic_write import atomic_directory, leftovers


def test_a_reader_sees_one_whole_version_at_every_instant_of_many_swaps(tmp_path):
    final = tmp_path / "ds=2026-11-22"
    with atomic_directory(final) as staging:
        for part in ("a", "b"):
            (staging / part).write_text("0")
    seen, stop = [], threading.Event()

    def read():  # pins the directory it opened, as a reader holding the folder does: its files are one version
        while not stop.is_set():
            try:
                folder = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                seen.append(("absent",))
                continue
            try:
                parts = []
                for name in sorted(os.listdir(folder)):
                    handle = os.open(name, os.O_RDONLY, dir_fd=folder)
                    parts.append((name, os.read(handle, 16).decode()))
                    os.close(handle)
            except FileNotFoundError:  # the version it pinned was swapped out and is being deleted: read again
                continue
            finally:
                current = final.stat().st_ino if final.exists() else None
                pinned = os.fstat(folder).st_ino
                os.close(folder)
            if current is None:
                seen.append(("absent",))
            elif pinned == current:  # still the current version after the read: a whole read of one version
                seen.append(tuple(parts))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 200):
            with atomic_directory(final) as staging:
                for part in ("a", "b"):
                    (staging / part).write_text(str(version))
    finally:
        stop.set()
        reader.join()
    # Never absent, never empty, never parts of two versions.
    assert seen and all(len(s) == 2 and s[0][1] == s[1][1] for s in seen)
    assert leftovers(final) == []


def test_a_failed_write_leaves_the_old_version_and_no_staging(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as staging:
        (staging / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(final) as staging:
        (staging / "a").write_text("new")
        raise RuntimeError("killed half way")
    assert (final / "a").read_text() == "old" and leftovers(final) == []
