"""Admission of image decodes: a memory budget shared by all concurrent decodes, and a pixel budget
per tool call.

A decode's memory is known from the image header before any pixel is decoded (width x height x
bytes per pixel, times the copies normalization makes), so concurrent decodes are admitted against
:class:`DecodeBudget` and wait their turn instead of together exhausting memory. Each tool call gets
a :class:`CallPixels` budget (see :func:`call_pixel_budget`): the pixels of all images one call
decodes, so a call with many large inputs is refused at the header of the input that goes over,
before that input is decoded.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from multimodal_mcp.errors import ImageInputError


class DecodeBudget:
    """Bytes of decoded pixels that may exist at once across concurrent decodes (thread-safe).

    A request larger than the whole budget is admitted alone (when nothing else is decoding), so
    every image within the per-image limits can be decoded.
    """

    def __init__(self, max_bytes: int, *, wait_seconds: float = 60.0) -> None:
        self.max_bytes = max_bytes
        self.wait_seconds = wait_seconds
        self.in_use = 0
        self._cond = threading.Condition()

    @contextmanager
    def admit(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the block; waits (up to ``wait_seconds``) for room.

        Raises:
            ImageInputError: no room within ``wait_seconds`` (the server is busy decoding).
        """
        self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    def acquire(self, nbytes: int) -> None:
        """Take ``nbytes`` of the budget, waiting up to ``wait_seconds`` for room; pair with
        :meth:`release`.

        Raises:
            ImageInputError: no room within ``wait_seconds`` (the server is busy decoding).
        """
        deadline = time.monotonic() + self.wait_seconds
        with self._cond:
            while self.in_use and self.in_use + nbytes > self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ImageInputError(
                        f"the server is busy decoding other images ({self.in_use // 2**20} MiB of its "
                        f"{self.max_bytes // 2**20} MiB decode budget in use); retry in a moment, or send "
                        "a smaller image"
                    )
                self._cond.wait(min(left, 0.5))
            self.in_use += nbytes

    def release(self, nbytes: int) -> None:
        with self._cond:
            self.in_use -= nbytes
            self._cond.notify_all()


class CallPixels:
    """Pixels one tool call may still decode, and the decode memory its images hold until the call
    ends (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._held: list[tuple[DecodeBudget, int]] = []

    def hold(self, budget: DecodeBudget, nbytes: int) -> None:
        """Keep ``nbytes`` (already acquired from ``budget``) until the call ends: its decoded images
        live as long as the call."""
        with self._lock:
            self._held.append((budget, nbytes))

    def release_all(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for budget, nbytes in held:
            budget.release(nbytes)

    def take(self, width: int, height: int) -> None:
        """Count a ``width`` x ``height`` image against the call's budget.

        Raises:
            ImageInputError: the call's images together would exceed the limit.
        """
        pixels = width * height
        with self._lock:
            if self.used + pixels > self.limit:
                raise ImageInputError(
                    f"this call's input images together exceed {self.limit} pixels (this one is "
                    f"{width}x{height}, after {self.used} pixels already read); downscale the inputs, "
                    "for example to 2048 px on the long side, or pass fewer images per call"
                )
            self.used += pixels


_call_pixels: ContextVar[CallPixels | None] = ContextVar("call_pixels", default=None)


@contextmanager
def call_pixel_budget(limit: int) -> Iterator[CallPixels]:
    """Give the code inside the block (one tool call, worker threads included) ``limit`` pixels."""
    budget = CallPixels(limit)
    token = _call_pixels.set(budget)
    try:
        yield budget
    finally:
        _call_pixels.reset(token)
        budget.release_all()
        if budget.used >= _TRIM_AFTER_PIXELS:
            return_free_memory()


_TRIM_AFTER_PIXELS = 4_000_000


def return_free_memory() -> None:
    """Hand memory freed by large images back to the operating system, in the background.

    glibc keeps freed heap memory for reuse (large image buffers below its adaptive mmap threshold
    come from the heap), so a server that decoded a few large inputs stays that large;
    ``malloc_trim(0)`` returns the free pages of every arena. A no-op where glibc is not the allocator.
    """
    trim = _malloc_trim()
    if trim is not None:
        threading.Thread(target=trim, args=(0,), name="malloc-trim", daemon=True).start()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def current_call_pixels() -> CallPixels | None:
    """The budget of the tool call being served, or None outside a call."""
    return _call_pixels.get()
