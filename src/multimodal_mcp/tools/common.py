"""What every tool implementation shares: the services they run on, image references, and helpers.

Tool implementations are plain async functions over pydantic params and results. They know nothing
of MCP: the server layer derives the MCP schema from the params models and renders the results.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from multimodal_mcp.backends.safety import SafetyGate
from multimodal_mcp.config import Config, DefaultFor, ModelSpec, Task
from multimodal_mcp.errors import InvalidArgument, UnknownModel, UnsupportedOperation
from multimodal_mcp.imaging.inputs import ImageResolver, ResolvedImage
from multimodal_mcp.imaging.store import ImageRecord, ImageStore
from multimodal_mcp.jobs import JobManager
from multimodal_mcp.pool import ModelPool

T = TypeVar("T")

Progress = Callable[[float, float | None, str | None], Coroutine[Any, Any, None]]
"""Reports progress to the caller: (progress, total, message)."""

MAX_IMAGE_ARG_CHARS = 48_000_000

ImageArg = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_IMAGE_ARG_CHARS),
    Field(
        description=(
            "The image: 'image://<id>' from an earlier result, a 'data:image/...;base64,...' URI, "
            "bare base64, or an absolute file path under a directory the server may read."
        )
    ),
]
ModelArg = Annotated[
    str | None,
    Field(max_length=64, description="A configured model name (see list_models); omit for the default."),
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
    safety: SafetyGate | None = None
    """The safety filter for generated images (None: no filter, as with filter = "off")."""


def pick_model(
    config: Config, requested: str | None, default_for: DefaultFor, task: Task
) -> tuple[str, ModelSpec]:
    """The requested model, or the configured default; errors name the models that fit."""
    fitting = config.models_for(task)
    name = requested if requested is not None else config.defaults.get(default_for)
    if name is None:
        raise UnknownModel(f"no default model is configured for {default_for}; pass model= one of {fitting}")
    spec = config.models.get(name)
    if spec is None:
        raise UnknownModel(f"no model named {name!r}; models for this tool: {', '.join(fitting) or 'none'}")
    if spec.task != task:
        raise UnsupportedOperation(
            f"model {name!r} is a {spec.task} model; this tool needs a {task} model: "
            f"{', '.join(fitting) or 'none'}"
        )
    return name, spec


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Blocking I/O (store reads and writes, decoding) off the event loop."""
    return await anyio.to_thread.run_sync(fn, *args)


async def resolve_image(services: Services, value: str, argument: str) -> ResolvedImage:
    return await in_thread(lambda: services.resolver.resolve(value, argument=argument))


class Clock:
    """Splits a call's wall time into model loading (and placement), inference and the rest."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.load = 0.0
        self.inference = 0.0

    @asynccontextmanager
    async def use(self, services: Services, name: str, *, near: Any = None) -> AsyncIterator[Any]:
        """Hold a pool model for the block, counting the time to get it as load time."""
        t = time.perf_counter()
        async with services.pool.use(name, near=near) as model:
            self.load += time.perf_counter() - t
            yield model

    @asynccontextmanager
    async def infer(self) -> AsyncIterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.inference += time.perf_counter() - t

    def timings(self) -> Timings:
        return Timings(
            load_seconds=round(self.load, 4),
            inference_seconds=round(self.inference, 4),
            total_seconds=round(time.perf_counter() - self.started, 4),
        )


def draw_seed() -> int:
    return secrets.randbelow(2**32)


def check_limit(name: str, value: int, limit: int, hint: str) -> None:
    if value > limit:
        raise InvalidArgument(f"{name}={value} exceeds this server's limit of {limit}; {hint}")
