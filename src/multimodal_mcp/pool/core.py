"""The model pool: owns every local model, places it within device budgets, and runs its work.

- Loads are single-flight: placement decisions and loads are serialised, and a model is loaded once.
- Sizes are estimated from safetensors headers before loading and measured after; the larger counts.
- When a model does not fit, idle models on that device are evicted least-recently-used first:
  a GPU's are moved to CPU RAM when the CPU budget allows (bringing them back is cheap), else
  dropped. A model in use is never evicted.
- Each device has one worker lane (:mod:`multimodal_mcp.pool.lanes`): calls queue in order, the
  waiting list is bounded, and past it a call gets an immediate ``Busy`` error. Queued calls report
  their position; running diffusion calls report each step and stop at the next step when cancelled.
- An out-of-memory error evicts the device's idle models and retries once.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.config import Config, ModelSpec
from multimodal_mcp.errors import BackendError, Busy, UnknownModel
from multimodal_mcp.handles import Progress
from multimodal_mcp.pool.devices import Device, GiB
from multimodal_mcp.pool.lanes import Lane, Work
from multimodal_mcp.pool.sizing import estimate_bytes

if TYPE_CHECKING:
    from multimodal_mcp.pool.batching import ClipBatcher

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _gib(n: int | None) -> str:
    if n is None:
        return "unknown size"
    return f"{n / GiB:.2f} GiB" if n >= GiB // 10 else f"{n / 1024**2:.1f} MiB"


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS out-of-memory, whatever class the torch version raises it as."""
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


CALL_LOAD_SECONDS: ContextVar[list[float] | None] = ContextVar("mmcp_call_load_seconds", default=None)
"""Where the calling task collects the seconds its CLIP requests waited for the model to be loaded or
placed (each request's batch waited once); a tool's clock sets it and counts them as loading. The
handles' answers carry their own ``load_seconds`` otherwise; a batch is shared, so this is how a
caller learns its part."""


@dataclass
class _Entry:
    name: str
    spec: ModelSpec
    model: Any = None
    home: Device | None = None  # where it runs
    location: Device | None = None  # where its weights are now: home, or the CPU when offloaded
    size: int | None = None
    in_use: int = 0
    last_used: float | None = None
    loads: int = 0
    load_seconds: float | None = None


@dataclass(frozen=True)
class ModelState:
    """What ``list_models`` and ``pool://status`` show about one model."""

    name: str
    loaded: bool
    location: str | None
    device: str | None
    memory_bytes: int | None
    in_use: int
    queue_depth: int
    last_used: float | None
    load_seconds: float | None
    loads: int


class ModelPool:
    """Loads, places, evicts and runs every local model. Create one per server."""

    def __init__(self, config: Config, devices: list[Device] | Callable[[], list[Device]]) -> None:
        """``devices``: the devices, GPUs first and the CPU last; or a function that discovers them
        (it may import torch), called once, when they are first needed (see :meth:`discover`)."""
        self._config = config
        self._settings = config.server.pool
        self._discover_devices = devices if callable(devices) else None
        self._devices: list[Device] | None = None
        self._devices_lock = threading.Lock()
        self._lanes_by_device: dict[str, Lane] = {}
        if not callable(devices):
            self._set_devices(devices)
        self._entries = {name: _Entry(name, spec) for name, spec in config.models.items() if not spec.hosted}
        self._placement = anyio.Lock()
        self._released = anyio.Event()
        self._clock: Callable[[], float] = time.monotonic
        self.evictions: dict[str, int] = {"offloaded": 0, "dropped": 0}
        self.hits = 0
        self.misses = 0
        self.oom_retries = 0
        self._batchers: dict[str, ClipBatcher] = {}

    # --- devices -------------------------------------------------------------------------------

    def _set_devices(self, devices: list[Device]) -> None:
        if not devices or devices[-1].kind != "cpu":
            raise ValueError("the device list must end with the CPU")
        self._lanes_by_device = {d.name: Lane(d, self._settings.max_queue) for d in devices}
        self._devices = devices

    @property
    def devices(self) -> list[Device]:
        """Every device models may use, GPUs first, the CPU last. Discovered on first use when the
        pool was given a discovery function: that blocks, so async code awaits :meth:`discover`."""
        if self._devices is None:
            with self._devices_lock:
                if self._devices is None:
                    assert self._discover_devices is not None
                    started = time.perf_counter()
                    self._set_devices(self._discover_devices())
                    logger.info(
                        "devices %s, discovered in %.2f s",
                        ", ".join(f"{d.name} ({d.budget_bytes / GiB:.1f} GiB budget)" for d in self.devices),
                        time.perf_counter() - started,
                    )
        assert self._devices is not None
        return self._devices

    async def discover(self) -> list[Device]:
        """The devices, discovered in a worker thread the first time (off the event loop)."""
        if self._devices is None:
            await anyio.to_thread.run_sync(lambda: self.devices)
        return self.devices

    @property
    def discovered(self) -> bool:
        return self._devices is not None

    @property
    def cpu(self) -> Device:
        return self.devices[-1]

    @property
    def _lanes(self) -> dict[str, Lane]:
        self.devices  # noqa: B018 (discovers them)
        return self._lanes_by_device

    # --- the main interface --------------------------------------------------------------------

    @property
    def device(self) -> str:
        """The preferred device's name (the first GPU, else the CPU)."""
        return self.devices[0].name

    def now(self) -> float:
        """The pool's clock (monotonic seconds), which ``last_used`` is measured on."""
        return self._clock()

    @property
    def load_counts(self) -> dict[str, int]:
        return {name: e.loads for name, e in self._entries.items() if e.loads}

    def is_loaded(self, name: str) -> bool:
        return self._entry(name).model is not None

    @asynccontextmanager
    async def use(self, name: str, *, near: Any = None) -> AsyncIterator[Any]:
        """Hold a model (loaded and on its home device) for the duration of the block.

        ``near``: another held model whose device this one must share (a ControlNet and its base).
        """
        entry = self._entry(name)
        await self.discover()
        entry.in_use += 1
        try:
            await self._ensure_home(entry, near)
            entry.last_used = self._clock()
            yield entry.model
        finally:
            entry.in_use -= 1
            entry.last_used = self._clock()
            self._signal_release()

    async def run(
        self, model: Any, work: Work[T], *, progress: Progress | None = None, label: str | None = None
    ) -> T:
        """Run ``work(model, on_step, cancel)`` on the model's device lane, in order with other calls.

        Cancelling the caller sets the cancel token: diffusion work stops at its next step.
        An out-of-memory error frees the device's idle models and retries once.
        """
        entry = self._entry_of(model)
        device = entry.home or self.cpu
        lane = self._lanes[device.name]
        async with lane.slot(progress):
            try:
                return await lane.run(
                    model, work, progress=progress, label=label or entry.name, portal=self._portal
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
            self.oom_retries += 1
            logger.warning(
                "out of memory on %s running %s; evicting idle models and retrying", device.name, entry.name
            )
            await self._evict_all_idle(device)
            await anyio.to_thread.run_sync(_empty_cache, device)
            try:
                return await lane.run(
                    model, work, progress=progress, label=label or entry.name, portal=self._portal
                )
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise BackendError(
                        f"{device.name} ran out of memory running {entry.name} even after freeing idle "
                        "models; ask for a smaller image, fewer images or fewer tokens, or try again when "
                        "other calls finish"
                    ) from exc
                raise

    # --- background maintenance ----------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start preloading, keep-alive unloading and batchers; stop them on exit."""
        try:
            async with anyio.from_thread.BlockingPortal() as portal, anyio.create_task_group() as tg:
                self._portal = portal
                self._task_group = tg
                if self._devices is None:  # in the background: the server answers meanwhile
                    tg.start_soon(self._discover_in_background)
                for name in self._settings.preload:
                    tg.start_soon(self._preload, name)
                if self._settings.keep_alive_seconds > 0:
                    tg.start_soon(self._keep_alive_loop)
                try:
                    yield
                finally:
                    self._task_group = None
                    self._portal = None
                    for lane in self._lanes_by_device.values():
                        lane.stop()
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Background tasks handle their own errors, so a group here wraps the body's exception.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    _task_group: anyio.abc.TaskGroup | None = None
    _portal: anyio.from_thread.BlockingPortal | None = None

    def start_background(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._task_group is None:
            raise RuntimeError("the pool is not running; use 'async with pool.running()'")
        self._task_group.start_soon(fn)

    async def _discover_in_background(self) -> None:
        try:
            await self.discover()
        except Exception:
            logger.exception("discovering the devices failed; the first call that needs them retries")

    async def _preload(self, name: str) -> None:
        try:
            async with self.use(name):
                logger.info("preloaded %s", name)
        except Exception:
            logger.exception("preloading %s failed", name)

    async def _keep_alive_loop(self) -> None:
        keep_alive = self._settings.keep_alive_seconds
        while True:
            await anyio.sleep(min(keep_alive / 4, 30))
            await self.unload_idle(older_than=keep_alive)

    async def unload_idle(self, *, older_than: float) -> list[str]:
        """Drop models idle for ``older_than`` seconds or more; returns their names."""
        now = self._clock()
        dropped = []
        async with self._placement:
            for entry in self._entries.values():
                if (
                    entry.model is not None
                    and entry.in_use == 0
                    and entry.last_used is not None
                    and now - entry.last_used >= older_than
                ):
                    await self._drop(entry, reason=f"idle for {now - entry.last_used:.0f} s")
                    dropped.append(entry.name)
        return dropped

    async def unload(self, name: str) -> bool:
        """Drop model ``name`` once no call holds it (waiting for the calls that do); False when it
        was not loaded. Used when something above the pool decides where models live (a Ray Serve
        replica whose multiplexed cache let it go)."""
        entry = self._entry(name)
        while True:
            released = self._released
            async with self._placement:
                if entry.model is None:
                    return False
                if entry.in_use == 0:
                    await self._drop(entry, reason="released by its owner")
                    return True
            await released.wait()

    # --- state ---------------------------------------------------------------------------------

    def states(self) -> list[ModelState]:
        out = []
        for e in self._entries.values():
            lane = self._lanes[(e.home or self.cpu).name]
            out.append(
                ModelState(
                    name=e.name,
                    loaded=e.model is not None,
                    location=e.location.name if e.location and e.model is not None else None,
                    device=e.home.name if e.home and e.model is not None else None,
                    memory_bytes=e.size if e.model is not None else None,
                    in_use=e.in_use,
                    queue_depth=len(lane.waiting) if e.model is not None else 0,
                    last_used=e.last_used,
                    load_seconds=e.load_seconds,
                    loads=e.loads,
                )
            )
        return out

    def used_bytes(self, device: Device) -> int:
        return sum(
            e.size or 0 for e in self._entries.values() if e.model is not None and e.location is device
        )

    def status(self) -> dict[str, Any]:
        """Budgets, occupancy, queues and counters, for ``pool://status``; ``torch_imported`` says
        whether this process has imported torch yet (a quick start imports it only when needed)."""
        return {
            "torch_imported": "torch" in sys.modules,
            "devices": [
                {
                    "name": d.name,
                    "kind": d.kind,
                    "total_bytes": d.total_bytes,
                    "budget_bytes": d.budget_bytes,
                    "used_bytes": self.used_bytes(d),
                    "running": self._lanes[d.name].running,
                    "queue_depth": len(self._lanes[d.name].waiting),
                    "max_queue": self._lanes[d.name].max_waiting,
                    "calls_served": self._lanes[d.name].served,
                }
                for d in self.devices
            ],
            "models": [state.__dict__ for state in self.states()],
            "counters": {
                "hits": self.hits,
                "misses": self.misses,
                "evictions_offloaded": self.evictions["offloaded"],
                "evictions_dropped": self.evictions["dropped"],
                "oom_retries": self.oom_retries,
            },
            "batchers": {name: b.stats() for name, b in self._batchers.items()},
        }

    def clip(self, name: str) -> ClipBatcher:
        """The batcher for CLIP model ``name``: concurrent calls share forward passes."""
        from multimodal_mcp.pool.batching import ClipBatcher

        self._entry(name)
        batcher = self._batchers.get(name)
        if batcher is None:
            batcher = self._batchers[name] = ClipBatcher(
                self,
                name,
                max_batch=self._settings.clip_max_batch,
                wait_s=self._settings.clip_batch_wait_ms / 1000,
                cache_size=self._settings.text_cache_size,
            )
        return batcher

    # --- placement -----------------------------------------------------------------------------

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownModel(f"no model named {name!r}; configured: {', '.join(self._entries)}")
        return entry

    def _entry_of(self, model: Any) -> _Entry:
        for entry in self._entries.values():
            if entry.model is model:
                return entry
        raise ValueError("that model is not held by this pool")

    def _signal_release(self) -> None:
        self._released.set()
        self._released = anyio.Event()

    @staticmethod
    def _ready(entry: _Entry, target: Device | None) -> bool:
        """Loaded, on its home device, and that home is ``target`` when one is required."""
        return (
            entry.model is not None
            and entry.location is entry.home
            and (target is None or entry.home is target)
        )

    async def _ensure_home(self, entry: _Entry, near: Any) -> None:
        target = self._entry_of(near).home if near is not None else None
        if self._ready(entry, target):
            self.hits += 1
            return
        self.misses += 1
        deadline = self._clock() + self._settings.placement_wait_seconds
        while True:
            released = self._released
            async with self._placement:
                if self._ready(entry, target):
                    return
                if entry.model is not None and target is not None and entry.home is not target:
                    await self._drop(entry, reason=f"needed on {target.name}")
                placed = await (
                    self._bring_home(entry) if entry.model is not None else self._load(entry, target)
                )
                if placed:
                    return
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise Busy(
                    f"no device has room for {entry.name} ({_gib(entry.size)}) while other models are in "
                    "use; "
                    "try again when the current calls finish"
                )
            with anyio.move_on_after(remaining):
                await released.wait()

    def _candidates(self, entry: _Entry, target: Device | None) -> list[Device]:
        if target is not None:
            return [target]
        if entry.spec.device is not None:
            pinned = [d for d in self.devices if d.name == entry.spec.device]
            if not pinned:
                logger.warning(
                    "model %s is pinned to %s, which is not available; using the CPU",
                    entry.name,
                    entry.spec.device,
                )
                return [self.cpu]
            return pinned
        gpus = sorted(
            (d for d in self.devices if d.is_gpu),
            key=lambda d: d.budget_bytes - self.used_bytes(d),
            reverse=True,
        )
        return [*gpus, self.cpu]

    async def estimate(self, name: str, device: Device | None = None) -> int | None:
        """Bytes model ``name`` would take on ``device`` (default: the preferred one), from its
        safetensors headers; None when its weights are not on this machine yet."""
        return await self._estimate(self._entry(name), device or self.devices[0])

    async def _estimate(self, entry: _Entry, device: Device) -> int | None:
        from multimodal_mcp.backends.devices import dtype_itemsize
        from multimodal_mcp.backends.sources import local_path

        source = local_path(entry.spec.source, self._config.server.tiny_dir)
        if source is None:
            return None
        itemsize = dtype_itemsize(entry.spec.dtype, device.torch_device)
        spec = entry.spec
        parts = tuple(part for part in (spec.weight_name, spec.image_encoder) if part)
        try:
            return await anyio.to_thread.run_sync(
                lambda: estimate_bytes(
                    Path(source), float_itemsize=itemsize, variant=spec.variant, parts=parts
                )
            )
        except (OSError, ValueError) as exc:
            logger.warning("cannot estimate the size of %s: %s", entry.name, exc)
            return None

    async def _load(self, entry: _Entry, target: Device | None) -> bool:
        """Place and load; False when every fitting device is full of models in use (caller waits)."""
        candidates = self._candidates(entry, target)
        chosen = None
        estimate = None
        fits_somewhere = False
        for device in candidates:
            estimate = await self._estimate(entry, device)
            if estimate is not None and estimate > device.budget_bytes:
                continue
            fits_somewhere = True
            if await self._make_room(device, estimate or 0, exclude=entry):
                chosen = device
                break
        if chosen is None:
            if not fits_somewhere:
                budgets = ", ".join(f"{d.name} {_gib(d.budget_bytes)}" for d in candidates)
                raise BackendError(
                    f"model {entry.name!r} needs about {_gib(estimate)} (from its safetensors headers), "
                    "more than "
                    f"any device's budget ({budgets}); use a smaller model or dtype, or raise the budget"
                )
            return False
        if (
            chosen.kind == "cpu"
            and any(d.is_gpu for d in self.devices)
            and target is None
            and entry.spec.device is None
        ):
            logger.warning("model %s does not fit on any GPU now; loading it on the CPU (slow)", entry.name)

        from multimodal_mcp.registry import LocalBackend, get

        backend = get(entry.spec.backend)
        if not isinstance(backend, LocalBackend):
            raise BackendError(f"model {entry.name!r} runs on {backend.title}, not in this server's pool")
        loader = backend.load
        context = LoadContext(device=chosen.torch_device, tiny_dir=self._config.server.tiny_dir)
        started = time.perf_counter()
        logger.info("loading %s (%s) on %s", entry.name, _gib(estimate), chosen.name)
        model = await anyio.to_thread.run_sync(loader, entry.name, entry.spec, context)
        entry.load_seconds = time.perf_counter() - started
        entry.model, entry.home, entry.location = model, chosen, chosen
        entry.size = max(estimate or 0, int(model.memory_bytes()))
        entry.loads += 1
        logger.info(
            "loaded %s on %s in %.2f s (%s)", entry.name, chosen.name, entry.load_seconds, _gib(entry.size)
        )
        if self.used_bytes(chosen) > chosen.budget_bytes:
            # The estimate was missing or low: make room after the fact.
            await self._make_room(chosen, 0, exclude=entry)
        return True

    async def _bring_home(self, entry: _Entry) -> bool:
        home = entry.home
        assert home is not None and entry.location is not None
        if not await self._make_room(home, entry.size or 0, exclude=entry):
            return False
        logger.info("moving %s back to %s", entry.name, home.name)
        await anyio.to_thread.run_sync(entry.model.move_to, home.torch_device)
        entry.location = home
        return True

    async def _make_room(self, device: Device, needed: int, *, exclude: _Entry) -> bool:
        """Evict idle models on ``device`` (LRU first) until ``needed`` bytes are free."""
        free = device.budget_bytes - self.used_bytes(device)
        if needed <= free:
            return True
        idle = sorted(
            (
                e
                for e in self._entries.values()
                if e.model is not None and e.location is device and e.in_use == 0 and e is not exclude
            ),
            key=lambda e: e.last_used or 0,
        )
        if needed > free + sum(e.size or 0 for e in idle):
            return False
        for victim in idle:
            if needed <= device.budget_bytes - self.used_bytes(device):
                break
            size = victim.size or 0
            # Offload to CPU RAM only into free CPU budget: never evict a CPU model to park a GPU one.
            if device.is_gpu and self.cpu.budget_bytes - self.used_bytes(self.cpu) >= size:
                await self._offload(victim)
            else:
                await self._drop(victim, reason=f"making room on {device.name}")
        return needed <= device.budget_bytes - self.used_bytes(device)

    async def _evict_all_idle(self, device: Device) -> None:
        async with self._placement:
            for entry in list(self._entries.values()):
                if entry.model is not None and entry.location is device and entry.in_use == 0:
                    await self._drop(entry, reason=f"out of memory on {device.name}")

    async def _offload(self, entry: _Entry) -> None:
        logger.info(
            "offloading %s from %s to CPU RAM", entry.name, entry.location.name if entry.location else "?"
        )
        await anyio.to_thread.run_sync(entry.model.move_to, self.cpu.torch_device)
        entry.location = self.cpu
        self.evictions["offloaded"] += 1

    async def _drop(self, entry: _Entry, *, reason: str) -> None:
        logger.info("unloading %s (%s)", entry.name, reason)
        device = entry.location
        entry.model, entry.home, entry.location = None, None, None
        self.evictions["dropped"] += 1
        self._batchers.pop(entry.name, None)
        await anyio.to_thread.run_sync(_collect, device)


def _collect(device: Device | None) -> None:
    gc.collect()
    _empty_cache(device)


def _empty_cache(device: Device | None) -> None:
    if device is not None and device.torch_device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
