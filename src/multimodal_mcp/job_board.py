"""A job board several MCP fronts share, so ``get_job``, ``cancel_job`` and progress work from any.

Behind a load balancer (or as several replicas of a Serve ingress), the front that started a job is
not necessarily the one a client's next ``get_job`` reaches. Each front keeps running its own jobs
(:class:`~multimodal_mcp.jobs.JobManager`) and mirrors each one onto the board: its status,
progress and, once done, its result as JSON with the result's summary. A front asked about a job it
does not have reads the board; ``cancel_job`` there posts a cancel request the owning front picks up
(within its mirroring interval, 0.5 s) and acts on. Records expire ``ttl_seconds`` after their last
update, like finished jobs on a front. Two boards:

- :class:`RayJobBoard`: a named, detached Ray actor (with ``serve --engine ray``);
- :class:`RedisJobBoard`: Redis (fronts outside Ray; the ``redis`` extra).

A record is a JSON object: ``id``, ``tool``, ``owner`` (the principal; a job is invisible to anyone
else), ``status``, ``progress``, ``total``, ``message``, ``elapsed_seconds``, ``error``, ``result``
(the tool's structured result, or null) and ``summary`` (its text for the model, or null).
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

Record = dict[str, Any]


class JobBoard(Protocol):
    """Where fronts publish their jobs and post cancel requests (see the module docstring)."""

    async def put(self, record: Record) -> None:
        """Publish (or update) a job's record."""
        ...

    async def get(self, job_id: str) -> Record | None:
        """The job's latest record, or None (never published, or expired)."""
        ...

    async def request_cancel(self, job_id: str) -> None:
        """Ask the front running the job to cancel it."""
        ...

    async def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was requested for the job."""
        ...


class MemoryJobBoard:
    """A board in one process's memory: what the Ray actor runs, and a board for tests."""

    def __init__(self, ttl_seconds: float = 3600.0) -> None:
        self._ttl = ttl_seconds
        self._records: dict[str, tuple[float, Record]] = {}
        self._cancels: dict[str, float] = {}

    def _purge(self) -> None:
        now = time.monotonic()
        for job_id in [k for k, (t, _) in self._records.items() if now - t > self._ttl]:
            del self._records[job_id]
        for job_id in [k for k, t in self._cancels.items() if now - t > self._ttl]:
            del self._cancels[job_id]

    async def put(self, record: Record) -> None:
        self._purge()
        self._records[str(record["id"])] = (time.monotonic(), dict(record))

    async def get(self, job_id: str) -> Record | None:
        self._purge()
        found = self._records.get(job_id)
        return dict(found[1]) if found is not None else None

    async def request_cancel(self, job_id: str) -> None:
        self._cancels[job_id] = time.monotonic()

    async def cancel_requested(self, job_id: str) -> bool:
        return job_id in self._cancels


class RedisJobBoard:
    """The board on Redis: one key per job (``<prefix><id>``, JSON) and one per cancel request
    (``<prefix><id>:cancel``), each expiring ``ttl_seconds`` after it was written.

    ``client`` is a ``redis.asyncio.Redis`` (or fakeredis's in tests).
    """

    def __init__(
        self, client: Any, *, ttl_seconds: float = 3600.0, prefix: str = "multimodal-mcp:job:"
    ) -> None:
        self._client = client
        self._ttl = max(1, int(ttl_seconds))
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, *, ttl_seconds: float = 3600.0) -> RedisJobBoard:
        """A board on the Redis server at ``url`` (``redis://host:6379/0``; ``rediss://`` for TLS)."""
        import redis.asyncio

        return cls(redis.asyncio.Redis.from_url(url), ttl_seconds=ttl_seconds)

    async def put(self, record: Record) -> None:
        await self._client.set(self._prefix + str(record["id"]), json.dumps(record), ex=self._ttl)

    async def get(self, job_id: str) -> Record | None:
        raw = await self._client.get(self._prefix + job_id)
        return json.loads(raw) if raw is not None else None

    async def request_cancel(self, job_id: str) -> None:
        await self._client.set(self._prefix + job_id + ":cancel", "1", ex=self._ttl)

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self._client.exists(self._prefix + job_id + ":cancel"))


class RayJobBoard:
    """The board as a named, detached Ray actor (:class:`MemoryJobBoard` inside): every front of the
    cluster that asks for ``name`` in ``namespace`` gets the same one."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    @classmethod
    def connect(
        cls,
        *,
        name: str = "multimodal-mcp-jobs",
        namespace: str = "multimodal-mcp",
        ttl_seconds: float = 3600.0,
    ) -> RayJobBoard:
        """The board actor, created on first use (needs ``ray.init`` done)."""
        import ray

        actor_class = ray.remote(num_cpus=0)(MemoryJobBoard)
        actor = actor_class.options(
            name=name, namespace=namespace, lifetime="detached", get_if_exists=True
        ).remote(ttl_seconds)
        return cls(actor)

    async def put(self, record: Record) -> None:
        await self._actor.put.remote(record)

    async def get(self, job_id: str) -> Record | None:
        found: Record | None = await self._actor.get.remote(job_id)
        return found

    async def request_cancel(self, job_id: str) -> None:
        await self._actor.request_cancel.remote(job_id)

    async def cancel_requested(self, job_id: str) -> bool:
        return bool(await self._actor.cancel_requested.remote(job_id))
