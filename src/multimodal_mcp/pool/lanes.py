"""Device lanes: each device's calls run one at a time, in order, on one dedicated worker thread.

- A lane's waiting list is bounded; past it a call gets an immediate ``Busy`` error. Queued calls
  report their position in the queue.
- Work runs on the lane's worker thread; its step callback forwards progress to the event loop at
  most every ``PROGRESS_INTERVAL`` seconds, and cancelling the caller sets the work's cancel token
  (diffusion work stops at its next step) and holds the lane until the worker has really stopped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio
import anyio.from_thread
import anyio.lowlevel

from multimodal_mcp.backends.base import Cancelled, CancelToken, StepCallback
from multimodal_mcp.errors import Busy
from multimodal_mcp.handles import Progress
from multimodal_mcp.pool.devices import Device

logger = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Any, StepCallback, CancelToken], T]
"""Model work: ``work(model, on_step, cancel)``, run on the model's device lane in a worker thread."""


PROGRESS_INTERVAL = 0.2
"""Seconds between progress notifications of one call (the first and last step are always sent)."""


@dataclass
class _Forwarding:
    """Hand-off between a worker's step callback and the task that sends progress."""

    wake: anyio.Event = field(default_factory=anyio.Event)
    latest: tuple[int, int] | None = None
    woken: float = float("-inf")
    finished: bool = False


@dataclass
class Worker:
    """One long-lived thread that runs a device's model work, one item at a time.

    A dedicated thread, not a pool thread: CUDA libraries keep per-thread state (cuBLAS and cuDNN
    handles, workspaces), and work that hops between threads was measured 36-46% slower per call on
    an H100 than the same call on one warm thread.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"multimodal-mcp {name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (item := self._queue.get()) is not None:
            item()

    def submit(self, item: Callable[[], None]) -> None:
        self._queue.put(item)

    def stop(self) -> None:
        self._queue.put(None)


@dataclass
class Lane:
    """One device's worker: FIFO slots, a bounded waiting list, and one dedicated thread."""

    device: Device
    max_waiting: int
    worker: Worker | None = None
    running: bool = False
    waiting: deque[object] = field(default_factory=deque)
    changed: anyio.Event = field(default_factory=anyio.Event)
    served: int = 0

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    @asynccontextmanager
    async def slot(self, progress: Progress | None) -> AsyncIterator[None]:
        if self.running or self.waiting:
            if len(self.waiting) >= self.max_waiting:
                raise Busy(
                    f"{self.device.name} is busy: {len(self.waiting)} calls are already waiting "
                    f"(limit {self.max_waiting}). Try again in a few seconds."
                )
            ticket = object()
            self.waiting.append(ticket)
            try:
                while self.running or self.waiting[0] is not ticket:
                    changed = self.changed
                    if progress is not None:
                        position = self.waiting.index(ticket) + 1
                        await progress(0, None, f"queued on {self.device.name}: position {position}")
                    await changed.wait()
            except BaseException:
                self.waiting.remove(ticket)
                self._notify()
                raise
            self.waiting.popleft()
        self.running = True
        try:
            yield
        finally:
            self.running = False
            self.served += 1
            self._notify()

    def stop(self) -> None:
        """Let the worker thread finish its current item and exit; a later call starts a new one."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    async def run(
        self,
        model: Any,
        work: Work[T],
        *,
        progress: Progress | None,
        label: str,
        portal: anyio.from_thread.BlockingPortal | None,
    ) -> T:
        """Run ``work(model, on_step, cancel)`` on this lane's worker thread (call it inside ``slot``).

        Steps are forwarded to ``progress`` as ``"<label>: step i/n"``. ``portal``, when the pool is
        running, lets the worker thread wake the event loop without waiting for it.
        """
        token = CancelToken()
        state = _Forwarding()
        loop_token = anyio.lowlevel.current_token()

        def wake() -> None:
            state.wake.set()

        def call_soon(fn: Callable[[], None]) -> None:
            """Run ``fn`` on the event loop from the worker thread, without waiting when possible."""
            try:
                if portal is not None:
                    portal.start_task_soon(fn)
                else:
                    anyio.from_thread.run_sync(fn, token=loop_token)
            except RuntimeError:  # the loop is shutting down
                pass

        def on_step(step: int, total: int) -> None:
            # Runs in the worker thread and never waits for the event loop: it records the step and,
            # at most every PROGRESS_INTERVAL (and on the first and last step), wakes the forwarder.
            # Waking the loop on every step would make the two threads trade the GIL each step,
            # which costs a fast GPU denoising loop several percent.
            if progress is None or token.cancelled:
                return
            state.latest = (step, total)
            now = time.monotonic()
            if step != 1 and step != total and now - state.woken < PROGRESS_INTERVAL:
                return
            state.woken = now
            call_soon(wake)

        async def forward() -> None:
            assert progress is not None
            sent = None
            while True:
                latest = state.latest
                if latest is not None and latest != sent:
                    sent = latest
                    step, total = latest
                    try:
                        await progress(step, total, f"{label}: step {step}/{total}")
                    except Exception:  # progress is best effort: a gone client must not break the work
                        logger.debug("progress notification failed", exc_info=True)
                    continue
                if state.finished:
                    return
                await state.wake.wait()
                state.wake = anyio.Event()

        done = anyio.Event()
        outcome: dict[str, Any] = {}

        def item() -> None:
            try:
                outcome["result"] = work(model, on_step, token)
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                call_soon(done.set)

        if self.worker is None:
            self.worker = Worker(self.device.name)
        worker = self.worker
        error: BaseException | None = None
        async with anyio.create_task_group() as tg:
            if progress is not None:
                tg.start_soon(forward)
            try:
                worker.submit(item)
                try:
                    await done.wait()
                except anyio.get_cancelled_exc_class():
                    # The caller was cancelled: stop the work at its next step, and keep the lane
                    # until the worker has really stopped, so the next call does not overlap it.
                    token.cancel()
                    with anyio.CancelScope(shield=True):
                        await done.wait()
                    raise
                error = outcome.get("error")
            finally:
                # Let the forwarder send the step still queued (before the result goes out), then stop.
                state.finished = True
                wake()
        if isinstance(error, Cancelled):
            await anyio.lowlevel.checkpoint()  # the caller was cancelled: re-raise that, not ours
        if error is not None:
            raise error
        return cast(T, outcome["result"])
