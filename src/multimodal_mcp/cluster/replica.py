"""A model replica: the class each Ray Serve deployment runs, one model pool per replica.

Each replica owns a :class:`~multimodal_mcp.pool.core.ModelPool` over its family's models, budgeted to
its share of the GPU, and answers calls addressed by model name through the same pool-backed handles
the in-process server uses: placement, the device lane (one call at a time, a bounded queue, ``Busy``
past it), progress and CLIP batching stay the pool's. ``call`` is an async generator, so Serve can
cancel it and stream its progress: a cancelled call sets the pool's cancel token (diffusion stops at
its next step) and the call ends only once the lane's worker has really stopped, so the next call on
that lane never overlaps it (Serve frees its own request slot as soon as the cancel arrives).

Inside Serve, each call checks its model out of Serve's multiplexed-model cache
(``@serve.multiplexed``; the front sends the model name as the multiplexed model id, so Serve routes
a model's calls to the replica that has it). The pool stays the memory authority: it loads what a
call needs and evicts by bytes within its budget; Serve's cache decides by count
(``max_models``) which of the family's models this replica keeps, and when Serve evicts one (its
least recently used, to make room for another model routed here) the replica releases that model
from its pool, so what Serve routes here is what this replica holds, and an evicted model's memory
is free for the model Serve now routes here.

Each replica publishes its status (replica id, node, models loaded, memory, queues) to the status
board (:mod:`.status`) every ``status_interval`` seconds, for the front's ``pool://status``.

No Ray import: Serve wraps the class (see :mod:`.engine`); tests also run it in-process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.backends.safety import SafetyGate
from multimodal_mcp.cluster import status as status_board
from multimodal_mcp.cluster.families import SAFETY
from multimodal_mcp.cluster.wire import METHODS, Frame, error_frame
from multimodal_mcp.config import Config
from multimodal_mcp.errors import UnknownModel, UnsupportedOperation
from multimodal_mcp.hub import ModelHub
from multimodal_mcp.pool.core import ModelPool
from multimodal_mcp.pool.devices import Device, GiB, discover_devices
from multimodal_mcp.pool.handles import PooledDepthEstimator

logger = logging.getLogger(__name__)

_RECENT = 256


class ModelReplica:
    """Serves ``models`` (configured names) from a pool of its own.

    Args:
        config: the server's config (only ``models``' entries are served from it).
        models: the model names this deployment serves (its family).
        gpu_share: this replica's share of each GPU it sees (Ray's ``num_gpus`` per replica, 1 when
            whole): its pool's GPU budgets are scaled by it, since Ray's fractions bound no memory.
            None: the share Ray assigned to this replica (1 outside Ray).
        heartbeat: seconds between ``("alive",)`` frames while a call waits or works.
        devices: the devices to use (tests); default: discovered when the replica starts.
        max_models: how many of ``models`` Serve's multiplexed cache keeps on this replica (its
            ``max_num_models_per_replica``); None: all of them (the pool's budget alone evicts).
        status_board: the name of the status board actor to publish to (None: not published).
        status_interval: seconds between two status records.
    """

    def __init__(
        self,
        config: Config,
        models: Sequence[str],
        *,
        gpu_share: float | None = None,
        heartbeat: float = 2.0,
        devices: list[Device] | None = None,
        max_models: int | None = None,
        status_board: str | None = None,
        status_interval: float = 5.0,
    ) -> None:
        self._config = config
        self._models = frozenset(models)
        self._gpu_share = gpu_share
        self._heartbeat = heartbeat
        self._devices = devices
        self._hub: ModelHub | None = None
        self._failure: BaseException | None = None
        self._ready: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._recent: deque[tuple[Any, ...]] = deque(maxlen=_RECENT)
        self._max_models = max_models or len(self._models)
        self._multiplexer: Callable[[str], Awaitable[Any]] | None = None
        self._multiplexed: set[str] = set()
        self._status_board = status_board
        self._status_interval = status_interval
        self._ongoing = 0
        self._safety: SafetyGate | None = None

    # --- the pool's life ------------------------------------------------------------------------

    def _discover(self) -> list[Device]:
        if self._devices is not None:
            return self._devices
        pool = self._config.server.pool
        found = discover_devices(
            self._config.server.device,
            gpu_headroom_bytes=int(pool.gpu_headroom_gib * GiB),
            cpu_budget_bytes=int(pool.cpu_budget_gib * GiB) if pool.cpu_budget_gib is not None else None,
        )
        share = self._gpu_share if self._gpu_share is not None else _assigned_gpu_share()
        share = min(max(share, 0.0), 1.0) or 1.0
        return [replace(d, budget_bytes=int(d.budget_bytes * share)) if d.is_gpu else d for d in found]

    async def _keep(self) -> None:
        assert self._ready is not None and self._stop is not None
        try:
            devices = await asyncio.to_thread(self._discover)
            pool = ModelPool(self._config, devices)
            self._hub = ModelHub(self._config, pool, HostedConnections(self._config.hosted))
            async with pool.running():
                self._ready.set()
                publisher = asyncio.create_task(self._publish()) if self._status_board else None
                try:
                    await self._stop.wait()
                finally:
                    if publisher is not None:
                        publisher.cancel()
        except Exception as exc:  # kept for the calls and health checks that come (never raised here)
            logger.error("the replica's model pool did not start", exc_info=exc)
            self._failure = exc
        finally:
            self._ready.set()

    def _start(self) -> asyncio.Event:
        """Start the pool in a task of the replica's event loop, once (from the first call or
        Serve's first health check, so that the pool's background tasks and lanes live on the loop
        that calls them); returns the event set when it runs or failed."""
        if self._ready is None:
            self._ready, self._stop = asyncio.Event(), asyncio.Event()
            self._keeper = asyncio.create_task(self._keep())
        return self._ready

    async def _started(self) -> ModelHub:
        """The replica's hub, once its pool runs."""
        await self._start().wait()
        if self._hub is None or self._failure is not None:
            raise RuntimeError("the replica's model pool did not start") from self._failure
        return self._hub

    async def stop(self) -> None:
        """Stop the pool (its lanes' threads end after their current work)."""
        if self._stop is not None and self._keeper is not None:
            self._stop.set()
            await asyncio.wait({self._keeper})

    # --- calls ----------------------------------------------------------------------------------

    async def call(
        self, model: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], progress: bool = True
    ) -> AsyncIterator[Frame]:
        """Run ``handle(model).method(*args, **kwargs)``, streaming frames (see :mod:`.wire`);
        ``progress`` False: the front has no one to tell, so no progress frames are sent."""
        call_id = next(self._ids)
        try:
            if model not in self._models:
                raise UnknownModel(f"this deployment does not serve model {model!r}")
            if method not in METHODS:
                raise UnsupportedOperation(f"no handle method {method!r}")
            hub = await self._started()
            handle = self._safety_gate() if model == SAFETY else _handle(hub, model)
        except Exception as exc:
            yield error_frame(exc, model=model, method=method)
            return

        frames: asyncio.Queue[Frame | None] = asyncio.Queue()

        async def forward(done: float, total: float | None, message: str | None) -> None:
            if total is not None:
                self._recent.append(("step", call_id, done, total, time.monotonic()))
            if progress:
                frames.put_nowait(("progress", done, total, message))

        async def run() -> Any:
            extra = {"progress": forward} if METHODS[method] else {}
            if model == SAFETY:  # the filter is no pool model: Serve's cache has nothing to route
                return await getattr(handle, method)(*args, **kwargs, **extra)
            # In the task, so heartbeats flow while a model loads; held from the checkout to the
            # end, so that Serve evicting the model meanwhile waits for this call to end.
            await self._checkout(model)
            async with hub.pool.use(model):
                return await getattr(handle, method)(*args, **kwargs, **extra)

        self._recent.append(("start", call_id, model, method, time.monotonic()))
        self._ongoing += 1
        task = asyncio.create_task(run())
        task.add_done_callback(lambda _: frames.put_nowait(None))
        try:
            if METHODS[method]:
                # A long call (generation, chat) says at once that it arrived: from then on, silence
                # past the front's timeout means this replica, not the way to it.
                yield ("alive",)
            while True:
                try:
                    frame = await asyncio.wait_for(frames.get(), self._heartbeat)
                except TimeoutError:
                    frame = ("alive",)
                if frame is None:
                    break
                yield frame
            try:
                result = task.result()
            except Exception as exc:
                yield error_frame(exc, model=model, method=method)
            else:
                yield ("result", result, _replica_id())
        finally:
            if not task.done():
                # Cancelled by the front (or its stream closed): stop the work and wait until the
                # lane's worker has stopped before this call ends.
                task.cancel()
                while not task.done():
                    try:
                        await asyncio.wait({task})
                    except asyncio.CancelledError:
                        continue
            outcome = "cancelled" if task.cancelled() else "failed" if task.exception() else "done"
            self._recent.append(("end", call_id, outcome, time.monotonic()))
            self._ongoing -= 1

    def _safety_gate(self) -> SafetyGate:
        """The safety filter of this deployment's config (loaded on its first check)."""
        if self._safety is None:
            settings = self._config.server.safety
            if not settings.enabled:
                # Never answer "not flagged" for a filter that is off: the front relies on it.
                raise UnsupportedOperation(
                    "the safety filter is off in this deployment's config; set [server.safety] "
                    'filter = "on" in the config the replicas load'
                )
            self._safety = SafetyGate(settings)
        return self._safety

    # --- Serve's multiplexed-model cache ----------------------------------------------------------

    async def _checkout(self, model: str) -> None:
        """Mark ``model`` most recently used in Serve's multiplexed cache, loading it into the pool
        when the cache does not hold it (Serve may evict another model first: see :meth:`_release`).
        Outside a Serve replica (tests in one process) there is no cache: the pool alone decides."""
        if self._multiplexer is None:
            self._multiplexer = _multiplexer(self._lease, self._max_models)
        await self._multiplexer(model)

    async def _lease(self, model: str) -> _Lease:
        """Serve's loader: load ``model`` into the pool and hand Serve a lease on it."""
        hub = await self._started()
        async with hub.pool.use(model):
            pass
        self._multiplexed.add(model)
        return _Lease(self, model)

    async def _release(self, model: str) -> None:
        """Serve evicted ``model`` from this replica's cache: drop it from the pool (once the calls
        that hold it end), so its memory serves the model Serve routes here instead."""
        self._multiplexed.discard(model)
        if self._hub is not None and await self._hub.pool.unload(model):
            logger.info("released %s: Serve's multiplexed cache evicted it", model)

    async def recent(self) -> list[tuple[Any, ...]]:
        """The replica's last calls, as events on its monotonic clock: ``("start", id, model,
        method, t)``, ``("step", id, done, total, t)`` and ``("end", id, outcome, t)`` (outcome
        done, failed or cancelled; ``end`` comes once the call's work has stopped)."""
        return list(self._recent)

    async def status(self) -> dict[str, Any]:
        """This replica's status, as the status board and ``pool://status`` show it:

        ``deployment``, ``replica`` (Serve's replica id), ``node`` (the Ray node id; None outside
        Ray), ``loaded`` (the deployment's models loaded in the pool), ``multiplexed`` (the models
        Serve's cache routes here), ``ongoing_calls``, ``devices`` (each with ``budget_bytes``,
        ``used_bytes``, ``running``, ``queue_depth``, ``max_queue``), ``models`` (the deployment's
        models: location, size, queue, loads) and ``counters`` (hits, misses, evictions).
        """
        hub = await self._started()
        pool = hub.pool.status()
        models = [m for m in pool["models"] if m["name"] in self._models]
        return {
            "deployment": _deployment(),
            "replica": _replica_id(),
            "node": _node_id(),
            "loaded": sorted(m["name"] for m in models if m["loaded"]),
            "multiplexed": sorted(self._multiplexed),
            "max_models": self._max_models,
            "ongoing_calls": self._ongoing,
            "devices": pool["devices"],
            "models": models,
            "counters": pool["counters"],
            **(
                {"safety": {"checked": self._safety.checked, "withheld": self._safety.withheld}}
                if self._safety is not None
                else {}
            ),
        }

    async def check_health(self) -> None:
        """Serve's periodic health check: starts the pool (and the status publisher) with the
        replica rather than with its first call, without waiting for it (discovering the devices
        may take longer than a health check may), and fails once the pool could not start, so Serve
        replaces the replica."""
        self._start()
        if self._failure is not None:
            raise RuntimeError("the replica's model pool did not start") from self._failure

    async def _publish(self) -> None:
        assert self._status_board is not None
        board = None
        while True:
            try:
                if board is None:
                    board = await asyncio.to_thread(status_board.connect, self._status_board)
                record = await self.status()
                wait = max(self._status_interval, 1.0)
                await status_board.publish(board, _replica_id() or "local", record, wait_seconds=wait)
            except Exception:
                # The board may have been lost with its node: the next round creates it again.
                logger.warning("publishing this replica's status failed", exc_info=True)
                board = None
            await asyncio.sleep(self._status_interval)


class _Lease:
    """What Serve's multiplexed cache holds for one model. Serve awaits the ``__del__`` it finds on
    a cached object when it evicts it; here that is an instance attribute (so garbage collection,
    which looks only at the class, never calls it) releasing the model from the replica's pool."""

    def __init__(self, replica: ModelReplica, model: str) -> None:
        self.model = model
        self._replica = replica
        self.__del__: Callable[[], Awaitable[None]] = self._evicted

    async def _evicted(self) -> None:
        await self._replica._release(self.model)


def _multiplexer(
    lease: Callable[[str], Awaitable[_Lease]], max_models: int
) -> Callable[[str], Awaitable[Any]]:
    """``lease`` behind Serve's multiplexed-model cache of ``max_models`` models, inside a Serve
    replica; outside one (no Ray, or not in a replica), a function that does nothing."""
    try:
        from ray import serve

        serve.get_replica_context()
    except Exception:

        async def unmanaged(model: str) -> None:
            return None

        return unmanaged

    async def load(model_id: str) -> _Lease:
        return await lease(model_id)

    multiplexed: Callable[[str], Awaitable[Any]] = serve.multiplexed(max_num_models_per_replica=max_models)(
        load
    )
    return multiplexed


def _replica_context() -> Any:
    try:
        from ray import serve

        return serve.get_replica_context()
    except Exception:
        return None


def _replica_id() -> str | None:
    """Serve's id of this replica (None outside Serve)."""
    context = _replica_context()
    return str(context.replica_id.unique_id) if context is not None else None


def _deployment() -> str | None:
    context = _replica_context()
    return str(context.deployment) if context is not None else None


class _DepthMaps:
    """A depth model's handle as a replica runs it (the hub gives depth models no handle by name:
    they are the server's depth-map preprocessor)."""

    def __init__(self, estimator: PooledDepthEstimator) -> None:
        self._estimator = estimator

    async def depth_map(self, image: Any) -> Any:
        return await self._estimator(image, {})


def _handle(hub: ModelHub, model: str) -> Any:
    if hub.spec(model).task == "depth":
        return _DepthMaps(PooledDepthEstimator(hub.pool, model, hub.capabilities(model)))
    return hub.handle(model)


def _assigned_gpu_share() -> float:
    """The GPU fraction Ray assigned to this process (a replica with ``num_gpus: 0.5`` gets 0.5), or
    1 when not in a Ray worker or given whole GPUs."""
    try:
        import ray

        if not ray.is_initialized():
            return 1.0
        gpus = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except Exception:
        return 1.0
    return gpus if 0 < gpus < 1 else 1.0


def _node_id() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id()) if ray.is_initialized() else None
    except Exception:
        return None
