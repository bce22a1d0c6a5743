"""Log hygiene: no credential, no whole client string, and no flood of one line in any log.

Installed by the CLI on its log handler (:func:`install`) and by the HTTP app on uvicorn's access
log (:func:`redact_access_log`). Nothing here knows about MCP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_LOG_CHARS = 2_000
"""Longest log message kept; longer ones (a client's 50 MiB URI) are cut, saying how long they were."""
BURST = 20
"""Lines with the same logger, level and format string passed in a window before the rest are dropped."""
WINDOW_SECONDS = 60.0


def prefix(value: object, limit: int = 64) -> str:
    """At most ``limit`` characters of a client string, repr-quoted, saying how long it was."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class RedactQuery(logging.Filter):
    """uvicorn's access log without query strings: a client may send a token as ``?access_token=``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            path = args[2].split("?", 1)[0]
            record.args = (*args[:2], f"{path}?<redacted>", *args[3:])
        return True


def redact_access_log() -> None:
    """Add :class:`RedactQuery` to uvicorn's access logger (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQuery) for f in access.filters):
        access.addFilter(RedactQuery())


@dataclass
class _Window:
    start: float
    passed: int = 0
    dropped: int = 0


class Hygiene(logging.Filter):
    """For a handler: cuts long messages and rate-limits repeated lines.

    A line repeats when its logger, level and format string are the same (the arguments may differ:
    ``socket.accept() out of system resource`` thousands of times a second is one line). After
    ``burst`` of them in ``window`` seconds the rest are dropped until the window ends; the next one
    through says how many were dropped.
    """

    def __init__(
        self,
        *,
        burst: int = BURST,
        window: float = WINDOW_SECONDS,
        max_chars: int = MAX_LOG_CHARS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.burst, self.window, self.max_chars, self._clock = burst, window, max_chars, clock
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self._clock()
        window = self._windows.get(key)
        dropped = 0
        if window is None or now - window.start >= self.window:
            dropped = window.dropped if window is not None else 0
            if len(self._windows) > 10_000:  # many distinct lines: forget the old windows
                self._windows.clear()
            window = self._windows[key] = _Window(start=now)
        if window.passed >= self.burst:
            window.dropped += 1
            return False
        window.passed += 1
        original = message = record.getMessage()
        if len(message) > self.max_chars:
            message = f"{message[: self.max_chars]}... (cut: {len(message)} characters)"
        if dropped:
            message = f"{message} [{dropped} more like this dropped in the last {self.window:.0f} s]"
        if message is not original:
            record.msg, record.args = message, None
        return True


def install(handler: logging.Handler) -> None:
    """Add :class:`Hygiene` to ``handler`` and redact uvicorn's access log."""
    handler.addFilter(Hygiene())
    redact_access_log()
