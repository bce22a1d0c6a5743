"""A model replica: the class each Ray Serve deployment runs, one model pool per replica.

Each replica owns a :class:`~multimodal_mcp.pool.core.ModelPool` over its family's models, budgeted to
its share of the GPU, and answers calls addressed by model name through the same pool-backed handles
the in-process server uses: placement, the device lane (one call at a time, a bounded queue, ``Busy``
past it), progress and CLIP batching stay the pool's. ``call`` is an async generator, so Serve can
cancel it and stream its progress: a cancelled call sets the pool's cancel token (diffusion stops at
its next step) and the call ends only once the lane's worker has really stopped, so the next call on
that lane never overlaps it (Serve frees its own request slot as soon as the cancel arrives).

No Ray import: Serve wraps the class (see :mod:`.engine`); tests also run it in-process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.cluster.wire import METHODS, Frame, error_frame
from multimodal_mcp.config import Config
from multimodal_mcp.errors import UnknownModel, UnsupportedOperation
from multimodal_mcp.hub import ModelHub
from multimodal_mcp.pool.core import ModelPool
from multimodal_mcp.pool.devices import Device, GiB, discover_devices

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
        devices: the devices to use (tests); default: discovered when the first call comes.
    """

    def __init__(
        self,
        config: Config,
        models: Sequence[str],
        *,
        gpu_share: float | None = None,
        heartbeat: float = 2.0,
        devices: list[Device] | None = None,
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
                await self._stop.wait()
        except BaseException as exc:
            self._failure = exc
            self._ready.set()
            raise

    async def _started(self) -> ModelHub:
        """The replica's hub, its pool running in a task of the replica's event loop (started by the
        first call, so that the pool's background tasks and lanes live on the loop that calls them)."""
        if self._ready is None:
            self._ready, self._stop = asyncio.Event(), asyncio.Event()
            self._keeper = asyncio.create_task(self._keep())
        await self._ready.wait()
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
            handle = hub.handle(model)
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
            return await getattr(handle, method)(*args, **kwargs, **extra)

        self._recent.append(("start", call_id, model, method, time.monotonic()))
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
                yield ("result", result)
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

    async def recent(self) -> list[tuple[Any, ...]]:
        """The replica's last calls, as events on its monotonic clock: ``("start", id, model,
        method, t)``, ``("step", id, done, total, t)`` and ``("end", id, outcome, t)`` (outcome
        done, failed or cancelled; ``end`` comes once the call's work has stopped)."""
        return list(self._recent)

    async def status(self) -> dict[str, Any]:
        """The replica's pool status (devices, models, queues), as ``pool://status`` shows it, and
        ``node``: the Ray node it runs on (None outside Ray)."""
        hub = await self._started()
        return {**hub.pool.status(), "node": _node_id()}


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
