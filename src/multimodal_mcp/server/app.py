"""The MCP surface: the only module that imports ``mcp``.

Each tool is registered from its implementation and its params model, so the MCP input schema is
derived from the same pydantic fields the implementation validates against: one source of truth.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from multimodal_mcp import __version__
from multimodal_mcp.backends.safety import SafetyGate, check_available
from multimodal_mcp.config import Config
from multimodal_mcp.errors import NotFound
from multimodal_mcp.imaging.codec import encode_preview
from multimodal_mcp.imaging.inputs import ImageResolver
from multimodal_mcp.imaging.store import ImageStore, validate_id
from multimodal_mcp.jobs import JobManager, JobPending, describe_failure
from multimodal_mcp.pool import Device, ModelPool, discover_devices
from multimodal_mcp.pool.devices import GiB
from multimodal_mcp.tools.clip_classify import ClipClassifyParams, clip_classify
from multimodal_mcp.tools.common import Params, Progress, Result, Services, in_thread
from multimodal_mcp.tools.compare_images import CompareImagesParams, compare_images
from multimodal_mcp.tools.controlled_generate import ControlledGenerateParams, controlled_generate
from multimodal_mcp.tools.describe_image import DescribeImageParams, describe_image
from multimodal_mcp.tools.generate_image import GenerateImageParams, generate_image
from multimodal_mcp.tools.jobs import CancelJobParams, GetJobParams, JobResult, cancel_job, get_job
from multimodal_mcp.tools.list_models import ListModelsParams, list_models

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
Tools to make and read images on local models. Every image you make or pass in gets an id; pass
'image://<id>' as any image argument to chain tools: generate_image -> clip_classify or
describe_image to check the result -> adjust the prompt (keep the seed to keep the composition) ->
generate again -> compare_images. controlled_generate keeps the structure of a reference image.
list_models shows the models and their defaults. Full-resolution images are resources at
image://<id>; results show small previews. A call that runs long returns a job id instead of its
result: call get_job(job_id, wait_seconds) until it is done."""

Implementation = Callable[[Any, Services, Progress | None], Awaitable[Result]]


def _signature_from(params_model: type[Params], result_model: type[BaseModel]) -> inspect.Signature:
    """A keyword-only signature mirroring ``params_model``'s fields (types, bounds, descriptions)."""
    parameters = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    for name, field in params_model.model_fields.items():
        meta = Field(description=field.description) if field.description else Field()
        annotation: Any = Annotated.__class_getitem__((field.annotation, *field.metadata, meta))  # type: ignore[attr-defined]
        default = inspect.Parameter.empty if field.is_required() else field.default
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        )
    return inspect.Signature(parameters, return_annotation=Annotated[CallToolResult, result_model])


def _friendly_validation(tool: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        problems.append(f"{where}: {message}")
    return (
        f"Invalid arguments for {tool}: "
        + "; ".join(problems)
        + ". See the tool's input schema for the bounds."
    )


class MultimodalServer(MCPServer[Services]):
    """MCPServer that refuses unknown arguments and whose argument errors read as sentences,
    without echoing the caller's data."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool_parameters: dict[str, frozenset[str]] = {}

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        known = self.tool_parameters.get(name)
        unknown = sorted(set(arguments) - known) if known is not None else []
        if unknown:
            raise ToolError(
                f"Invalid arguments for {name}: unknown argument(s) {unknown}; "
                f"accepted: {', '.join(sorted(known or ())) or 'none'}"
            )
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(_friendly_validation(name, exc.__cause__)) from exc.__cause__
            raise


class Renderer:
    """Turns a tool result into MCP content: a text summary, inline previews, and resource links."""

    def __init__(self, config: Config, store: ImageStore) -> None:
        self.settings = config.server
        self.store = store

    async def render(self, result: Result) -> CallToolResult:
        content: list[Any] = [TextContent(type="text", text=result.summary())]
        structured = result.model_dump(mode="json")
        ids = result.preview_ids()
        if ids:
            # The whole result must stay under the client's limit: the JSON and the text come out of
            # the budget first, the rest is shared between previews (base64 adds a third).
            overhead = len(result.summary()) + len(str(structured)) + 2048
            per_image = max(8_000, (self.settings.result_max_bytes - overhead) * 3 // 4 // len(ids))

            def previews() -> list[ImageContent]:
                out = []
                for image_id in ids:
                    preview = encode_preview(
                        self.store.open(image_id),
                        max_side=self.settings.preview_max_side,
                        max_bytes=per_image,
                        fmt=self.settings.preview_format,
                    )
                    out.append(
                        ImageContent(
                            type="image",
                            data=base64.b64encode(preview.data).decode(),
                            mime_type=preview.mime_type,
                        )
                    )
                return out

            content.extend(await in_thread(previews))
            for image_id in ids:
                record = await in_thread(self.store.record, image_id)
                content.append(
                    ResourceLink(
                        type="resource_link",
                        uri=record.uri,
                        name=record.id,
                        description=f"{record.kind} image, {record.width}x{record.height} PNG",
                        mime_type="image/png",
                    )
                )
        return CallToolResult(content=content, structured_content=structured)


def _register(
    server: MultimodalServer,
    config: Config,
    services_of: Callable[[Context], Services],
    implementation: Implementation,
    params_model: type[Params],
    result_model: type[Result],
    *,
    title: str,
    read_only: bool,
    as_job: bool,
) -> None:
    name = implementation.__name__

    async def handler(ctx: Context, **arguments: Any) -> CallToolResult:
        try:
            params = params_model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(_friendly_validation(name, exc)) from None

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await ctx.report_progress(done, total, message)

        services = services_of(ctx)
        if not as_job:
            try:
                result = await implementation(params, services, progress)
            except Exception as exc:
                raise ToolError(describe_failure(name, exc)) from exc
            return await Renderer(config, services.store).render(result)

        # Run as a job: if it outlasts the wait, hand back a job id instead of making the client wait.
        jobs = services.jobs
        job = jobs.start(name, lambda job_progress: implementation(params, services, job_progress))
        try:
            finished = await jobs.wait(job, config.server.pool.job_wait_seconds, progress)
        except anyio.get_cancelled_exc_class():
            jobs.cancel(job)  # the client cancelled the call: stop the work too
            raise
        info = job.info(jobs.now())
        if not finished:
            pending = JobPending(job=info)
            text = (
                f"{name} is still running after {info.elapsed_seconds:.0f} s as job {info.id}"
                f"{f' ({info.message})' if info.message else ''}. Call get_job(job_id='{info.id}', "
                "wait_seconds=30) for the result, or cancel_job to stop it."
            )
            return CallToolResult(
                content=[TextContent(type="text", text=text)],
                structured_content=pending.model_dump(mode="json"),
            )
        if job.status != "done":
            raise ToolError(job.error or f"{name} was cancelled")
        return await Renderer(config, services.store).render(job.result)

    output_model: Any = result_model
    if as_job:

        class Output(RootModel[result_model | JobPending]):  # type: ignore[valid-type]
            # The tool's result, or a job handle when the call outlasts the server's wait.
            model_config = ConfigDict(
                json_schema_extra={"type": "object"}, title=f"{result_model.__name__}OrJob"
            )

        output_model = Output
    server.tool_parameters[name] = frozenset(params_model.model_fields)
    handler.__signature__ = _signature_from(params_model, output_model)  # type: ignore[attr-defined]
    handler.__annotations__ = {"ctx": Context, "return": Annotated[CallToolResult, output_model]}
    handler.__name__ = name
    server.add_tool(
        handler,
        name=name,
        title=title,
        description=inspect.cleandoc(implementation.__doc__ or ""),
        annotations=ToolAnnotations(
            title=title,
            read_only_hint=read_only,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=False,
        ),
    )


def create_services(config: Config, devices: list[Device] | None = None) -> Services:
    """Everything the tools share. Creates the store directory; loads no model.

    ``devices`` defaults to what is discovered (GPUs, then the CPU); tests pass their own.
    """
    if devices is None:
        pool_settings = config.server.pool
        cpu_budget = pool_settings.cpu_budget_gib
        devices = discover_devices(
            config.server.device,
            gpu_headroom_bytes=int(pool_settings.gpu_headroom_gib * GiB),
            cpu_budget_bytes=int(cpu_budget * GiB) if cpu_budget is not None else None,
        )
    store = ImageStore(config.server.store_dir)
    resolver = ImageResolver(store, config.server.allowed_roots, config.server.limits)
    pool = ModelPool(config, devices)
    jobs = JobManager(
        pool.start_background,
        ttl_seconds=config.server.pool.job_ttl_seconds,
        describe_failure=describe_failure,
    )
    safety = SafetyGate(config.server.safety) if config.server.safety.enabled else None
    return Services(config=config, store=store, resolver=resolver, pool=pool, jobs=jobs, safety=safety)


def build_server(config: Config, services: Services | None = None) -> MultimodalServer:
    """The MCP server over ``config``. Services are created in the lifespan unless given (tests).

    Raises:
        ConfigError: the safety filter is on but its classifier is not installed.
    """
    if services is None:
        check_available(config.server.safety)

    running: list[Services] = []  # the lifespan's services, for resources that get no request context

    @asynccontextmanager
    async def lifespan(_: MCPServer[Services]) -> AsyncIterator[Services]:
        created = (
            services if services is not None else await anyio.to_thread.run_sync(create_services, config)
        )
        logger.info(
            "multimodal-mcp %s: profile %s, store %s, devices %s, safety filter %s",
            __version__,
            config.profile,
            config.server.store_dir,
            ", ".join(f"{d.name} ({d.budget_bytes / GiB:.1f} GiB budget)" for d in created.pool.devices),
            config.server.safety.classifier if created.safety is not None else "off",
        )
        async with created.pool.running():
            running.append(created)
            try:
                yield created
            finally:
                running.remove(created)

    server = MultimodalServer(
        name="multimodal-mcp",
        title="multimodal-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
    )

    def services_of(ctx: Context) -> Services:
        return cast(Services, ctx.request_context.lifespan_context)

    from multimodal_mcp.tools.clip_classify import ClipClassifyResult
    from multimodal_mcp.tools.compare_images import CompareImagesResult
    from multimodal_mcp.tools.controlled_generate import ControlledGenerateResult
    from multimodal_mcp.tools.describe_image import DescribeImageResult
    from multimodal_mcp.tools.generate_image import GenerateImageResult
    from multimodal_mcp.tools.list_models import ListModelsResult

    # (implementation, params, result, title, read-only, runs as a job)
    tools: list[tuple[Implementation, type[Params], type[Result], str, bool, bool]] = [
        (generate_image, GenerateImageParams, GenerateImageResult, "Generate image", False, True),
        (controlled_generate, ControlledGenerateParams, ControlledGenerateResult, "ControlNet", False, True),
        (clip_classify, ClipClassifyParams, ClipClassifyResult, "Zero-shot classify (CLIP)", True, True),
        (describe_image, DescribeImageParams, DescribeImageResult, "Describe image (VLM)", True, True),
        (compare_images, CompareImagesParams, CompareImagesResult, "Compare two images", True, True),
        (list_models, ListModelsParams, ListModelsResult, "List models", True, False),
        (get_job, GetJobParams, JobResult, "Get a long-running call's result", True, False),
        (cancel_job, CancelJobParams, JobResult, "Cancel a long-running call", False, False),
    ]
    for implementation, params_model, result_model, title, read_only, as_job in tools:
        _register(
            server,
            config,
            services_of,
            implementation,
            params_model,
            result_model,
            title=title,
            read_only=read_only,
            as_job=as_job,
        )

    @server.resource(
        "image://{image_id}",
        name="image",
        title="Stored image",
        description="A full-resolution PNG the server made or received, by id.",
        mime_type="image/png",
    )
    async def read_image(image_id: str, ctx: Context) -> bytes:
        try:
            validate_id(image_id)
            return await in_thread(services_of(ctx).store.read_png, image_id)
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None

    @server.resource(
        "pool://status",
        name="pool-status",
        title="Model pool status",
        description="Devices with budgets and use; models with location, size and queue; hit/miss counts.",
        mime_type="application/json",
    )
    async def pool_status() -> str:
        if not running:
            raise ResourceNotFoundError("the server is not running")
        return json.dumps(running[-1].pool.status(), indent=1)

    return server
