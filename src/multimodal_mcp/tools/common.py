"""What every tool implementation shares: the services they run on, image references, and helpers.

Tool implementations are plain async functions over pydantic params and results. They know nothing
of MCP: the server layer derives the MCP schema from the params models and renders the results.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from multimodal_mcp.config import Config
from multimodal_mcp.errors import InvalidArgument, SpendingRefused
from multimodal_mcp.handles import Detail, SafetyChecker
from multimodal_mcp.handles import Progress as Progress  # re-exported for the tools
from multimodal_mcp.hub import ModelHub
from multimodal_mcp.imaging.inputs import ImageResolver, ResolvedImage
from multimodal_mcp.imaging.store import ImageRecord, ImageStore
from multimodal_mcp.jobs import JobManager
from multimodal_mcp.pool import ModelPool
from multimodal_mcp.pool.core import CALL_LOAD_SECONDS

T = TypeVar("T")
logger = logging.getLogger(__name__)


MAX_IMAGE_ARG_CHARS = 48_000_000

ImageArg = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_IMAGE_ARG_CHARS),
    Field(description="image://<id>, a data: URI, base64, a file path or a URL."),
]
DetailArg = Annotated[
    Detail | None,
    Field(description=("'high' reads fine print, 'low' is cheaper (models that list detail levels).")),
]
ModelArg = Annotated[
    str | None,
    Field(
        max_length=64,
        description="A model from list_models; omit for the default.",
    ),
]


class Params(BaseModel):
    """Base for tool parameters: unknown arguments are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    """Base for tool results (the structured content). Subclasses say how to summarise themselves."""

    def summary(self) -> str:
        raise NotImplementedError

    def preview_ids(self) -> list[str]:
        """Ids of the images worth showing inline, most important first."""
        return []


class ImageRef(BaseModel):
    """A stored image."""

    id: str = Field(description="The image id; pass 'image://<id>' to any tool's image argument.")
    uri: str = Field(description="The image:// resource holding the full-resolution PNG.")
    width: int
    height: int
    path: str | None = Field(
        default=None,
        description="The PNG's absolute path on the server's disk; only with delivery='path'.",
    )

    @classmethod
    def of(cls, record: ImageRecord) -> ImageRef:
        return cls(id=record.id, uri=record.uri, width=record.width, height=record.height)


class Timings(BaseModel):
    load_seconds: float = Field(
        description="Time spent loading models for this call (0 when already loaded)."
    )
    inference_seconds: float = Field(description="Time spent running models.")
    total_seconds: float


@dataclass
class Services:
    """Shared state every tool runs on, created once in the server's lifespan."""

    config: Config
    store: ImageStore
    resolver: ImageResolver
    pool: ModelPool
    jobs: JobManager
    hub: ModelHub
    """Every model by name: its handle and capabilities, wherever it runs."""
    safety: SafetyChecker | None = None
    """The safety filter for generated images (None: no filter, as with filter = "off")."""


def given_arguments(params: BaseModel, *names: str) -> dict[str, Any]:
    """The arguments among ``names`` (default: all) the caller gave, with their values. An argument
    left out, or given as null, is not given."""
    fields = names or tuple(type(params).model_fields)
    return {
        name: getattr(params, name)
        for name in fields
        if name in params.model_fields_set and getattr(params, name) is not None
    }


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Blocking I/O (store reads and writes, decoding) off the event loop."""
    return await anyio.to_thread.run_sync(fn, *args)


READ_SIDE_CLIP = 512
"""Short side a CLIP-style encoder needs at most (its processors take 224 to 448 px); a model whose
processor settings are on disk is read at its own side instead (:meth:`ModelHub.image_side`)."""
READ_SIDE_VLM = 1024
"""Short side a vision-language model needs at most (hosted detail levels and local processors
resize to 768-1024 px on the short side or less); a model whose processor takes one known side
(LLaVA 1.5: 336 px) is read at that side instead (:meth:`ModelHub.image_side`)."""


async def resolve_image(
    services: Services, value: str, argument: str, *, min_side: int | None = None
) -> ResolvedImage:
    """Decode an image argument and prepare its stored form; nothing is written (see keep_inputs).

    ``min_side``: the use needs no more than this many pixels on the short side, so a large JPEG may
    be decoded at reduced scale (see :meth:`ImageResolver.resolve`).

    Raises:
        ImageInputError: the argument is not a readable image within the server's limits.
        NotFound: an ``image://`` id the caller does not have.
    """
    return await in_thread(lambda: services.resolver.resolve(value, argument=argument, min_side=min_side))


async def keep_inputs(services: Services, *resolved: ResolvedImage | None) -> None:
    """Store the images a call received. Call it once the call's checks have passed and its work is
    about to start, so that a refused call leaves nothing in the store; the ids in ``resolved``
    records are then readable. ``None`` and ``image://`` references (stored already) are skipped."""
    pending = [r.pending for r in resolved if r is not None and r.pending is not None]
    if pending:
        await in_thread(lambda: [services.store.commit(p) for p in pending])


@asynccontextmanager
async def keeping_inputs(services: Services, *resolved: ResolvedImage | None) -> AsyncIterator[None]:
    """:func:`keep_inputs` alongside the block (a read-only call's model work), waited for before
    the block is left: the writes are off the call's critical path, and the ids its result names are
    readable when it is returned. Enter it once the call's checks have passed, as keep_inputs.
    The store's background conversions of staged inputs wait while the block runs (up to
    :data:`~multimodal_mcp.imaging.staging.DEFER_SECONDS`).
    An error of the block or of a write propagates as itself (not as an exception group)."""
    with services.store.staging.deferring():  # no background conversion slows the model work
        if not any(r is not None and r.pending is not None for r in resolved):
            yield
            return
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keep_inputs, services, *resolved)
                yield
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from group.exceptions[0].__cause__
            raise


async def concurrently(calls: Sequence[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Await ``calls`` at once (CPU work in worker threads and model work on the device lanes then
    overlap) and return their results in order. The first error cancels the rest and propagates as
    itself (not as an exception group)."""
    results: list[Any] = [None] * len(calls)

    async def run(index: int) -> None:
        results[index] = await calls[index]()

    try:
        async with anyio.create_task_group() as tg:
            for index in range(len(calls)):
                tg.start_soon(run, index)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
    return results


class Clock:
    """Splits a call's wall time into model loading (and placement), inference and the rest."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.load = 0.0
        self.inference = 0.0
        # CLIP requests of this call (batched with others') report their loading here.
        self._clip_loads: list[float] = []
        CALL_LOAD_SECONDS.set(self._clip_loads)

    def loaded(self, seconds: float) -> None:
        """Count ``seconds`` of a model call (measured inside ``infer``) as loading, not inference."""
        self.load += seconds
        self.inference -= seconds

    @asynccontextmanager
    async def infer(self) -> AsyncIterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.inference += time.perf_counter() - t

    def timings(self) -> Timings:
        clip_loads = sum(self._clip_loads)  # waited inside infer(): loading, not inference
        return Timings(
            load_seconds=round(self.load + clip_loads, 4),
            inference_seconds=round(self.inference - clip_loads, 4),
            total_seconds=round(time.perf_counter() - self.started, 4),
        )


def draw_seed() -> int:
    return secrets.randbelow(2**32)


def check_limit(name: str, value: int, limit: int, hint: str) -> None:
    if value > limit:
        raise InvalidArgument(f"{name}={value} exceeds this server's limit of {limit}; {hint}")


# --- spending confirmation -----------------------------------------------------------------------


@dataclass(frozen=True)
class SpendingRequest:
    """One paid call a tool is about to make, as the user is asked about it."""

    model: str
    backend: str
    what: str  # what will be bought, e.g. "2 images of 1024x1024" or "one chat completion"


SpendingDecision = Literal["accept", "decline", "cancel"]
SpendingApprover = Callable[[SpendingRequest], Awaitable[SpendingDecision | None]]
"""Asks the user about a paid call. Returns None when the user cannot be asked (the client has no
elicitation support). Provided by the MCP layer for the duration of a tool call."""

_approver: ContextVar[SpendingApprover | None] = ContextVar("spending_approver", default=None)


@contextmanager
def spending_approver(approver: SpendingApprover | None) -> Iterator[None]:
    """Make ``approver`` the one :func:`approve_spending` asks, for the code run inside the block."""
    token = _approver.set(approver)
    try:
        yield
    finally:
        _approver.reset(token)


async def approve_spending(services: Services, model: str, what: str) -> None:
    """Check that a call to ``model`` may spend money, before any work is done. Free models pass.

    Follows ``server.spending``: ``allow`` passes, ``deny`` refuses; ``ask`` asks the user through
    the approver the MCP layer provides, or, when nobody can be asked, applies
    ``default_without_elicitation``.

    Raises:
        SpendingRefused: declined, cancelled, or refused by the configuration; nothing was spent.
    """
    if not services.hub.paid(model):
        return
    policy = services.config.server.spending
    if policy.confirm == "allow":
        logger.info("paid call to %s allowed by server.spending.confirm = 'allow': %s", model, what)
        return
    if policy.confirm == "deny":
        raise SpendingRefused(
            f"{model!r} is a paid model and this server refuses paid calls (server.spending.confirm = "
            "'deny'); nothing was spent. Use a local model instead (list_models)."
        )
    approver = _approver.get()
    backend = services.hub.spec(model).backend
    decision = await approver(SpendingRequest(model, backend, what)) if approver else None
    if decision is None:
        if policy.default_without_elicitation == "allow":
            logger.info("paid call to %s allowed without asking (client cannot confirm): %s", model, what)
            return
        raise SpendingRefused(
            f"{model!r} is a paid model; this server confirms paid calls with the user, but this client "
            "cannot ask (it has no MCP elicitation support, or it speaks a protocol revision before "
            "2026-07-28 to a server on stateless HTTP, which cannot ask in the middle of a call) and "
            "server.spending.default_without_elicitation = "
            "'deny'; nothing was spent. Use a local model instead (list_models)."
        )
    if decision != "accept":
        verb = "declined" if decision == "decline" else "cancelled"
        raise SpendingRefused(
            f"the user {verb} the paid call to {model} ({what}); nothing was spent. Do not retry it "
            "unasked: use a local model (list_models) or ask the user first."
        )
    logger.info("paid call to %s confirmed by the user: %s", model, what)
