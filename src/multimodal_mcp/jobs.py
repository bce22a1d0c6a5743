"""Long jobs: a tool call that outlives the client's patience.

Some clients give up on a tool call after about 60 seconds. Every call runs as a job; when it is not
done after the configured wait, the call returns a job handle instead, the job keeps running, and
``get_job`` / ``cancel_job`` reach it. Finished jobs stay retrievable for a configured time, within
two bounds: each principal's newest ``max_retained_per_principal`` finished jobs, and
``max_retained_bytes`` of results (as JSON) in all; the oldest finished ones go first.
A job belongs to the principal that started it and runs as that principal; to anyone else it does not
exist. Every image a job reads or writes is held (see :func:`~.imaging.store.holding`) while the job
runs and while its result is retained, so the store's retention never removes what a result names.
No MCP imports: the server layer adapts progress and results.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from pydantic import BaseModel, Field

from multimodal_mcp.errors import MultimodalError, NotFound
from multimodal_mcp.imaging.store import holding
from multimodal_mcp.job_board import JobBoard, Record
from multimodal_mcp.principals import acting_as, current_principal

logger = logging.getLogger(__name__)

JobStatus = Literal["running", "done", "failed", "cancelled"]
Progress = Callable[[float, float | None, str | None], Coroutine[Any, Any, None]]


class JobInfo(BaseModel):
    """Where a job stands."""

    id: str = Field(description="Pass to get_job or cancel_job.")
    tool: str
    status: JobStatus
    progress: float | None = Field(description="Steps done (or 0 while queued).")
    total: float | None
    message: str | None = Field(
        description="The latest progress message, e.g. 'queued on cuda:0: position 2'."
    )
    elapsed_seconds: float
    error: str | None = Field(default=None, description="Why it failed (status 'failed').")


class JobPending(BaseModel):
    """Returned instead of the tool's result when the call runs past the server's wait."""

    job: JobInfo


@dataclass
class Job:
    id: str
    tool: str
    started: float
    owner: str
    status: JobStatus = "running"
    progress: float | None = None
    total: float | None = None
    message: str | None = None
    result: Any = None
    error: str | None = None
    finished: float | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    listeners: list[Progress] = field(default_factory=list)
    images: set[str] = field(default_factory=set)
    """Ids of the images the job prepared, wrote or looked up (its inputs and results)."""
    size: int = 0
    """The finished job's result and error as JSON, in bytes (what retaining it costs)."""
    delivered: bool = False
    """The result reached the caller (the call returned it, or get_job did): its images are no
    longer held for it."""

    def info(self, now: float) -> JobInfo:
        return JobInfo(
            id=self.id,
            tool=self.tool,
            status=self.status,
            progress=self.progress,
            total=self.total,
            message=self.message,
            elapsed_seconds=round((self.finished or now) - self.started, 3),
            error=self.error,
        )


class JobManager:
    """Runs tool calls as jobs in a background task group and keeps their outcomes for a while."""

    def __init__(
        self,
        spawn: Callable[[Callable[[], Coroutine[Any, Any, None]]], None],
        *,
        ttl_seconds: float,
        describe_failure: Callable[[str, BaseException], str],
        max_retained_per_principal: int = 64,
        max_retained_bytes: int = 64 * 1024 * 1024,
        board: JobBoard | None = None,
        mirror_interval: float = 0.5,
    ) -> None:
        self._spawn = spawn
        self._board = board
        self._mirror_interval = mirror_interval
        self._ttl = ttl_seconds
        self._per_principal = max_retained_per_principal
        self._max_bytes = max_retained_bytes
        self._evicted = 0
        self._describe_failure = describe_failure
        self._jobs: dict[str, Job] = {}
        self._clock = time.monotonic

    def now(self) -> float:
        return self._clock()

    def start(self, tool: str, run: Callable[[Progress], Awaitable[Any]]) -> Job:
        """Start ``run(progress)`` as a job; progress goes to whoever is listening."""
        self._purge()
        job = Job(id=secrets.token_hex(8), tool=tool, started=self._clock(), owner=current_principal())
        self._jobs[job.id] = job

        async def progress(done: float, total: float | None, message: str | None) -> None:
            job.progress, job.total, job.message = done, total, message
            for listener in list(job.listeners):
                try:
                    await listener(done, total, message)
                except Exception:  # a client that went away must not stop the job
                    logger.debug("progress listener failed", exc_info=True)

        async def body() -> None:
            try:
                with job.scope, acting_as(job.owner), holding(job.images):
                    job.result = await run(progress)
                    job.status = "done"
            except Exception as exc:
                job.status = "failed"
                job.error = self._describe_failure(tool, exc)
            finally:
                if job.status == "running":
                    job.status = "cancelled"
                job.finished = self._clock()
                job.size = _size_of(job.result) + len(job.error or "")
                job.done.set()
                self._bound(job.owner)

        self._spawn(body)
        if self._board is not None:
            self._spawn(lambda: self._mirror(job))
        return job

    # --- the shared board (several fronts: see multimodal_mcp.job_board) ---------------------------

    def _record(self, job: Job) -> Record:
        done = job.status == "done"
        summary = getattr(job.result, "summary", None) if done else None
        return {
            **job.info(self._clock()).model_dump(mode="json"),
            "owner": job.owner,
            "result": job.result.model_dump(mode="json")
            if done and isinstance(job.result, BaseModel)
            else None,
            "summary": summary() if callable(summary) else None,
        }

    async def _mirror(self, job: Job) -> None:
        """Publish ``job`` on the board while it runs (when it changed) and once finished; cancel it
        when another front posted a cancel request."""
        assert self._board is not None
        sent: tuple[Any, ...] | None = None
        try:
            while True:
                finished = job.done.is_set()
                state = (job.status, job.progress, job.total, job.message)
                if state != sent or finished:
                    await self._board.put(self._record(job))
                    sent = state
                if finished:
                    return
                if await self._board.cancel_requested(job.id):
                    job.scope.cancel()
                with anyio.move_on_after(self._mirror_interval):
                    await job.done.wait()
        except Exception:  # the board is best effort: this front's own get_job still works
            logger.warning("publishing job %s on the shared job board failed", job.id, exc_info=True)

    async def shared(
        self, job_id: str, wait_seconds: float
    ) -> tuple[JobInfo, dict[str, Any] | None, str | None]:
        """A job another front runs, from the board: its info, result (JSON) and summary, waiting up
        to ``wait_seconds`` for it to finish.

        Raises:
            NotFound: no board, the board has no such job, or it belongs to another principal.
        """
        deadline = self._clock() + wait_seconds
        while True:
            record = await self._board.get(job_id) if self._board is not None else None
            if record is None or record.get("owner") != current_principal():
                raise self._not_found(job_id)
            if record["status"] != "running" or self._clock() >= deadline:
                info = JobInfo.model_validate({k: record[k] for k in JobInfo.model_fields if k in record})
                return info, record.get("result"), record.get("summary")
            await anyio.sleep(min(self._mirror_interval, max(0.0, deadline - self._clock())))

    async def cancel_shared(self, job_id: str) -> None:
        """Ask the front running job ``job_id`` to cancel it (see :meth:`shared` for errors)."""
        await self.shared(job_id, 0)  # the same existence and owner check
        assert self._board is not None
        await self._board.request_cancel(job_id)

    def get(self, job_id: str) -> Job:
        self._purge()
        job = self._jobs.get(job_id)
        if job is None or job.owner != current_principal():
            raise self._not_found(job_id)
        return job

    @property
    def shares(self) -> bool:
        """Whether jobs are mirrored on a board several fronts share."""
        return self._board is not None

    def _not_found(self, job_id: str) -> NotFound:
        return NotFound(
            f"no job {job_id[:40]!r}: it never existed, finished more than {self._ttl:.0f} s ago, or "
            "was dropped as the oldest past pool.max_jobs_per_principal or pool.max_job_bytes"
        )

    async def wait(self, job: Job, seconds: float, listener: Progress | None = None) -> bool:
        """Wait up to ``seconds`` for ``job``, forwarding its progress to ``listener`` meanwhile."""
        if listener is not None:
            job.listeners.append(listener)
        try:
            with anyio.move_on_after(seconds):
                await job.done.wait()
        finally:
            if listener is not None:
                job.listeners.remove(listener)
        return job.done.is_set()

    def cancel(self, job: Job) -> None:
        job.scope.cancel()

    def held_images(self) -> set[str]:
        """The images of running jobs, and of finished ones whose result is retrievable and has not
        reached the caller yet (a call that outlasted the wait, before get_job returns it). Safe to
        call from a worker thread (the store's retention does)."""
        now = self._clock()
        held: set[str] = set()
        for job in list(self._jobs.values()):
            if job.finished is None or (not job.delivered and now - job.finished <= self._ttl):
                held.update(job.images)
        return held

    def _bound(self, owner: str) -> None:
        """Drop the oldest finished jobs past the per-principal count and the total bytes."""
        finished = sorted(
            (j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.finished or 0.0
        )
        mine = [j for j in finished if j.owner == owner]
        drop = {j.id for j in mine[: max(0, len(mine) - self._per_principal)]}
        total = sum(j.size for j in finished if j.id not in drop)
        for job in finished:
            if total <= self._max_bytes:
                break
            if job.id not in drop:
                drop.add(job.id)
                total -= job.size
        for job_id in drop:
            del self._jobs[job_id]
        if drop:
            self._evicted += len(drop)
            logger.info(
                "dropped %d finished job(s) to stay within pool.max_jobs_per_principal (%d) and "
                "pool.max_job_bytes (%d)",
                len(drop),
                self._per_principal,
                self._max_bytes,
            )

    def retained(self) -> tuple[int, int]:
        """(finished jobs kept, their bytes)."""
        finished = [j for j in self._jobs.values() if j.finished is not None]
        return len(finished), sum(j.size for j in finished)

    def _purge(self) -> None:
        now = self._clock()
        expired = [
            j.id for j in self._jobs.values() if j.finished is not None and now - j.finished > self._ttl
        ]
        for job_id in expired:
            del self._jobs[job_id]


def _size_of(result: Any) -> int:
    if result is None:
        return 0
    if isinstance(result, BaseModel):
        return len(result.model_dump_json())
    return len(repr(result))


def describe_failure(tool: str, exc: BaseException) -> str:
    """The caller-facing message for a failed call: curated errors verbatim, others by log id."""
    if isinstance(exc, MultimodalError):
        return str(exc)
    error_id = secrets.token_hex(4)
    logger.error("tool %s failed (error id %s)", tool, error_id, exc_info=exc)
    return (
        f"{tool} failed with an internal error (id {error_id}); the server logged the details and keeps "
        "running. Try again, or try another model (list_models)."
    )
