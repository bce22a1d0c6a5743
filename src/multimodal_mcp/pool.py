"""The model pool: every local model is loaded once, on first use, and its work runs in worker threads.

This is the simple form: a cache of loaded models with single-flight loads and one worker per
device, so model work never blocks the event loop and never runs two computations on one device at
once. Memory budgets, eviction and batching build on this interface.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

from multimodal_mcp.backends.base import CancelToken, LoadContext, StepCallback
from multimodal_mcp.backends.registry import get_loader
from multimodal_mcp.config import Config
from multimodal_mcp.errors import UnknownModel

logger = logging.getLogger(__name__)

T = TypeVar("T")
ProgressFn = Callable[[int, int], Coroutine[Any, Any, None]]
Work = Callable[[StepCallback, CancelToken], T]


@dataclass(frozen=True)
class ModelState:
    name: str
    loaded: bool
    device: str | None
    memory_bytes: int | None
    last_used: float | None
    load_seconds: float | None


class ModelPool:
    """Loads models by name and runs their work off the event loop."""

    def __init__(self, config: Config, device: str) -> None:
        self._config = config
        self.device = device
        self._context = LoadContext(device=device, tiny_dir=config.server.tiny_dir)
        self._models: dict[str, Any] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        self._last_used: dict[str, float] = {}
        self._load_seconds: dict[str, float] = {}
        self.load_counts: Counter[str] = Counter()

    def is_loaded(self, name: str) -> bool:
        return name in self._models

    async def get(self, name: str) -> Any:
        """The loaded model called ``name``, loading it (once, even under concurrent callers)."""
        spec = self._config.models.get(name)
        if spec is None:
            raise UnknownModel(f"no model named {name!r}; configured: {', '.join(self._config.models)}")
        model = self._models.get(name)
        if model is None:
            lock = self._locks.setdefault(name, anyio.Lock())
            async with lock:
                model = self._models.get(name)
                if model is None:
                    loader = get_loader(spec.backend, spec.task)
                    started = time.perf_counter()
                    logger.info("loading model %s from %s on %s", name, spec.source, self.device)
                    model = await anyio.to_thread.run_sync(
                        loader, name, spec, self._context, limiter=self._limiter(self.device)
                    )
                    self._load_seconds[name] = time.perf_counter() - started
                    self.load_counts[name] += 1
                    self._models[name] = model
                    logger.info("loaded model %s in %.2f s", name, self._load_seconds[name])
        self._last_used[name] = time.time()
        return model

    def _limiter(self, device: str) -> anyio.CapacityLimiter:
        limiter = self._limiters.get(device)
        if limiter is None:
            limiter = self._limiters[device] = anyio.CapacityLimiter(1)
        return limiter

    async def run(self, device: str, work: Work[T], *, progress: ProgressFn | None = None) -> T:
        """Run ``work(on_step, cancel)`` on ``device``'s worker thread.

        If the calling task is cancelled, the cancel token is set so the work stops at its next
        step; the call then re-raises the cancellation once the worker has returned.
        """
        token = CancelToken()

        def on_step(step: int, total: int) -> None:
            if progress is None or token.cancelled:
                return
            try:
                anyio.from_thread.run(progress, step, total)
            except Exception:  # progress is best effort: a gone client must not break the work
                logger.debug("progress notification failed", exc_info=True)

        async def cancel_on_exit() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                token.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_on_exit)
            try:
                result = await anyio.to_thread.run_sync(
                    work, on_step, token, limiter=self._limiter(device), abandon_on_cancel=False
                )
            finally:
                tg.cancel_scope.cancel()
        return result

    async def run_sync(self, device: str, fn: Callable[[], T]) -> T:
        """Run a short blocking model call (no progress, no cancellation) on ``device``'s worker."""
        return await anyio.to_thread.run_sync(fn, limiter=self._limiter(device))

    def states(self) -> list[ModelState]:
        states = []
        for name in self._config.models:
            model = self._models.get(name)
            states.append(
                ModelState(
                    name=name,
                    loaded=model is not None,
                    device=getattr(model, "device", None) if model is not None else None,
                    memory_bytes=model.memory_bytes() if model is not None else None,
                    last_used=self._last_used.get(name),
                    load_seconds=self._load_seconds.get(name),
                )
            )
        return states
