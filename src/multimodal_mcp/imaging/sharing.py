"""One image store, several processes: every stdio server a user starts shares the default store.

Each process holds a shared ``flock`` on the store directory itself while its store is open (no
lock file: the directory holds images, records and the index, :mod:`.store_index`). Opening a store
cleans up what interrupted writes left behind, and what is safe to remove depends on who else is
there:

- **alone** (the lock could be taken exclusively): every leftover, as a single process would;
- **with others**: only what is provably stale: temporary files whose writer process is gone (their
  names carry its pid) and, for leftovers without a pid or images without a record, those older
  than ``STALE_SECONDS`` (a write takes milliseconds between its two renames). A file another
  process is writing right now is never touched.

Without ``fcntl`` (Windows) every open counts as alone, as before.
"""

from __future__ import annotations

import os
import re
import time
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

STALE_SECONDS = 3600.0
_TEMP_PID = re.compile(r"\.p(\d+)\.")


def temp_prefix(name: str) -> str:
    """The prefix of a temporary file for ``name``: hidden, and naming this process."""
    return f".{name}.p{os.getpid()}."


class StoreLock:
    """This process's shared hold on a store directory."""

    def __init__(self, root: Path) -> None:
        self._fd: int | None = None
        if fcntl is not None:
            self._fd = os.open(root, os.O_RDONLY)
            weakref.finalize(self, os.close, self._fd)  # the hold ends with the store
            fcntl.flock(self._fd, fcntl.LOCK_SH)

    def alone(self) -> bool:
        """Whether no other process has this store open; leaves this process's hold shared."""
        if self._fd is None:
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        return True


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def writer_gone(pid: int) -> bool:
    """Whether the process ``pid`` (a writer named by a temporary file or a pending index row) has
    exited."""
    return not _alive(pid)


def _old(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > STALE_SECONDS
    except FileNotFoundError:
        return False


def stale_temporary(path: Path, *, alone: bool) -> bool:
    """Whether a temporary file may be removed: alone, or its writer is gone (or it is old)."""
    if alone:
        return True
    found = _TEMP_PID.search(path.name)
    return not _alive(int(found[1])) if found is not None else _old(path)


def stale_stray(path: Path, *, alone: bool) -> bool:
    """Whether an image without a record may be removed: alone, or it is too old to be in flight."""
    return alone or _old(path)
