"""The MCP surface: the only module that imports ``mcp``.

Each tool is registered from its implementation and its params model, so the MCP input schema is
derived from the same pydantic fields the implementation validates against: one source of truth.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import io
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Annotated, Any, cast

import anyio
from mcp.server.elicitation import AcceptedElicitation, render_elicitation_schema
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CallToolResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    ImageContent,
    InputRequiredResult,
    ResourceLink,
    TextContent,
    ToolAnnotations,
)
from mcp_types.version import is_version_at_least
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from multimodal_mcp import __version__
from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.backends.safety import SafetyGate, check_available
from multimodal_mcp.config import Config, Delivery
from multimodal_mcp.errors import ConfirmationPending, NotFound, SpendingRefused
from multimodal_mcp.hub import ModelHub
from multimodal_mcp.imaging.codec import encode_preview
from multimodal_mcp.imaging.inputs import ImageResolver
from multimodal_mcp.imaging.store import URI_SCHEME, ImageStore, validate_id
from multimodal_mcp.jobs import JobManager, JobPending, describe_failure
from multimodal_mcp.pool import Device, ModelPool, discover_devices
from multimodal_mcp.pool.devices import GiB
from multimodal_mcp.principals import LOCAL, acting_as
from multimodal_mcp.server.delivery import (
    CHARS_PER_TOKEN,
    ENVELOPE_BYTES,
    add_paths,
    image_tokens,
    text_tokens,
)
from multimodal_mcp.server.http import auth_for, principal_of_request
from multimodal_mcp.tools.clip_classify import ClipClassifyParams, clip_classify
from multimodal_mcp.tools.common import (
    Params,
    Progress,
    Result,
    Services,
    SpendingDecision,
    SpendingRequest,
    in_thread,
    spending_approver,
)
from multimodal_mcp.tools.compare_images import CompareImagesParams, compare_images
from multimodal_mcp.tools.controlled_generate import ControlledGenerateParams, controlled_generate
from multimodal_mcp.tools.describe_image import DescribeImageParams, describe_image
from multimodal_mcp.tools.generate_image import GenerateImageParams, generate_image
from multimodal_mcp.tools.jobs import CancelJobParams, GetJobParams, JobResult, cancel_job, get_job
from multimodal_mcp.tools.list_models import ListModelsParams, list_models

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
Tools to make and read images on local (or hosted) models. Every image you make or pass in gets an id; pass
'image://<id>' as any image argument to chain tools: generate_image -> clip_classify or
describe_image to check the result -> adjust the prompt (keep the seed to keep the composition) ->
generate again -> compare_images. controlled_generate keeps the structure of a reference image.
list_models shows the models and their defaults. Full-resolution images are resources at
image://<id>; results show small previews (delivery='none' for text only, 'full' for the full image,
'path' for its local file path). verify=True on generate_image scores the result against the prompt.
A call that runs long returns a job id instead of its result: call get_job(job_id, wait_seconds)
until it is done. Models marked paid in list_models cost money per call; the server may ask
the user to confirm, and a declined call returns an error: do not retry it unasked."""

Implementation = Callable[[Any, Services, Progress | None], Awaitable[Result]]


def _signature_from(
    params_model: type[Params], result_model: type[BaseModel], options: type[Params] | None = None
) -> inspect.Signature:
    """A keyword-only signature mirroring ``params_model``'s fields (types, bounds, descriptions),
    followed by ``options``' fields (arguments the server layer handles)."""
    parameters = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context)]
    fields = {**params_model.model_fields, **(options.model_fields if options is not None else {})}
    for name, field in fields.items():
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


_given: ContextVar[frozenset[str] | None] = ContextVar("given_arguments", default=None)
"""The names of the arguments the client sent to the tool being called (the SDK fills in defaults)."""


def _principal(context: Any) -> str:
    if context is None:
        return LOCAL
    try:
        request = context.request_context.request
    except ValueError:  # no request context: an in-process call
        return LOCAL
    return principal_of_request(request)


class MultimodalServer(MCPServer[Services]):
    """MCPServer that refuses unknown arguments and whose argument errors read as sentences,
    without echoing the caller's data. Each call and resource read runs as its caller's principal,
    which owns what the call makes (see ``multimodal_mcp.principals``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool_parameters: dict[str, frozenset[str]] = {}

    async def read_resource(self, uri: Any, context: Any = None) -> Any:
        with acting_as(_principal(context)):
            return await super().read_resource(uri, context)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        with acting_as(_principal(context)):
            return await self._call_tool(name, arguments, context)

    async def _call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        _given.set(frozenset(arguments))
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


DELIVERY_HELP = (
    "How to return images: 'preview' (default: a small inline image plus a link), 'full' (the full "
    "PNG inline when it fits the client's limits, else a preview), 'none' (text and image:// links only), "
    "'path' (a preview plus the PNG's local file path, for clients on the server's machine)."
)


class RenderOptions(Params):
    """Arguments the server layer handles itself, for tools whose results show images."""

    delivery: Annotated[Delivery | None, Field(description=DELIVERY_HELP)] = None


class SpendingConsent(BaseModel):
    """The form a user answers to confirm a paid call."""

    approve: bool = Field(default=True, title="Allow this paid call")


_INPUT_REQUIRED_VERSION = "2026-07-28"
"""From this protocol revision on, a tool call asks its client through an InputRequiredResult round
(the client answers and calls again) instead of a server-to-client request in the middle of the call."""


class SpendingApprover:
    """Asks the client's user to confirm the paid calls of one tool call, over MCP elicitation.

    Protocol revisions before 2026-07-28 get an ``elicitation/create`` request while the call waits.
    Later ones cannot be asked mid-call: the question goes back as an ``InputRequiredResult`` (the
    tool stops with :class:`ConfirmationPending` before doing any work), and the client calls again
    with the answer, which the tool's next run finds here. Answers of earlier rounds ride
    ``request_state``; each answer is keyed by a digest of the question it answers, so it counts only
    for that exact question. A client that declared no elicitation support is never asked.
    """

    def __init__(self, ctx: Context, tool: str) -> None:
        self.ctx = ctx
        self.tool = tool
        version = ctx.protocol_version
        self.rounds = version is not None and is_version_at_least(version, _INPUT_REQUIRED_VERSION)
        self.decided: dict[str, SpendingDecision] = self._decode(ctx.request_state) if self.rounds else {}
        self.pending: dict[str, ElicitRequest] = {}
        self.asking = 0
        self.idle = anyio.Event()
        self.idle.set()
        self.closed = False  # the call has returned (a job handle): nobody waits for an answer

    def _can_ask(self) -> bool:
        capabilities = self.ctx.client_capabilities
        elicitation = capabilities.elicitation if capabilities is not None else None
        if elicitation is None or (elicitation.form is None and elicitation.url is not None):
            return False  # no elicitation, or URL mode only
        return self.rounds or self.ctx.session.can_send_request

    def message(self, request: SpendingRequest) -> str:
        return (
            f"{self.tool} wants to make a paid call to {request.model} ({request.backend}): {request.what}. "
            "Allow it?"
        )

    async def __call__(self, request: SpendingRequest) -> SpendingDecision | None:
        if not self._can_ask():
            return None
        if self.closed:
            raise SpendingRefused(
                f"{self.tool} reached the paid call to {request.model} only after it had returned a job "
                "handle, too late to ask the user; nothing was spent. Call it again."
            )
        message = self.message(request)
        key = "spend-" + hashlib.sha256(message.encode()).hexdigest()[:16]
        if not self.rounds:
            return await self._ask_now(message)
        if key in self.decided:
            return self.decided[key]
        answer = (self.ctx.input_responses or {}).get(key)
        if isinstance(answer, ElicitResult):
            self.decided[key] = _decision(answer.action, answer.content)
            return self.decided[key]
        self.pending[key] = ElicitRequest(
            params=ElicitRequestFormParams(
                message=message, requested_schema=render_elicitation_schema(SpendingConsent)
            )
        )
        raise ConfirmationPending(f"waiting for the user to confirm the paid call to {request.model}")

    async def _ask_now(self, message: str) -> SpendingDecision:
        self.asking += 1
        self.idle = anyio.Event()
        try:
            result = await self.ctx.elicit(message, SpendingConsent)
        except (ValueError, MCPError) as exc:  # a malformed answer, or the client failed to ask
            logger.info("%s: the spending confirmation failed (%s); treating it as cancelled", self.tool, exc)
            return "cancel"
        finally:
            self.asking -= 1
            if not self.asking:
                self.idle.set()
        if isinstance(result, AcceptedElicitation):
            return _decision("accept", result.data.model_dump())
        return result.action

    def input_required(self) -> InputRequiredResult | None:
        """The questions to send back, when the tool stopped to ask."""
        if not self.pending:
            return None
        state = base64.urlsafe_b64encode(json.dumps(self.decided).encode()).decode()
        return InputRequiredResult(input_requests=dict(self.pending), request_state=state)

    @staticmethod
    def _decode(state: str | None) -> dict[str, SpendingDecision]:
        if not state:
            return {}
        try:
            data = json.loads(base64.urlsafe_b64decode(state.encode()))
        except (ValueError, binascii.Error):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            k: v
            for k, v in data.items()
            if isinstance(k, str) and k.startswith("spend-") and v in ("accept", "decline", "cancel")
        }


def _decision(action: str, content: dict[str, Any] | None) -> SpendingDecision:
    """Accepting the form with approve = false is a decline."""
    if action == "accept":
        return "accept" if (content or {}).get("approve", True) is True else "decline"
    return "decline" if action == "decline" else "cancel"


class Renderer:
    """Turns a tool result into MCP content: a text summary, inline images, and resource links.

    ``delivery`` picks what is inline (see ``DELIVERY_HELP``); the whole result is kept under the
    client's limits (``server.client_limits``: bytes, estimated tokens, image side, see
    server/delivery.py), dropping inline images with a note rather than going over.
    """

    def __init__(self, config: Config, store: ImageStore) -> None:
        self.settings = config.server
        self.store = store
        self.limits = config.server.client_budget()
        self.max_bytes = min(self.settings.result_max_bytes, self.limits.max_result_bytes) - ENVELOPE_BYTES
        self.max_tokens = (
            self.limits.max_result_tokens - text_tokens(ENVELOPE_BYTES)
            if self.limits.max_result_tokens is not None
            else None
        )

    async def render(self, result: Result, delivery: Delivery | None = None) -> CallToolResult:
        delivery = delivery or self.settings.delivery
        structured = result.model_dump(mode="json")
        path_of = (lambda image_id: str(self.store.png_path(image_id))) if delivery == "path" else None
        paths = await in_thread(add_paths, structured, path_of)
        text = result.summary()
        if paths:
            text += "\nFiles on the server's disk: " + ", ".join(
                f"{URI_SCHEME}{image_id} = {path}" for image_id, path in paths.items()
            )
        ids = result.preview_ids()
        links = [await in_thread(self._link, image_id) for image_id in ids]
        notes: list[str] = []
        images: list[ImageContent] = []
        if ids and delivery != "none":
            fixed = self._measure(text, links, [], structured)
            if delivery == "full":
                images = await in_thread(self._full, ids, fixed)
                if not images:
                    notes.append(
                        "The full images do not fit this client's limits on one result "
                        f"({self._limits_text()}); showing previews. Read the image:// resources for "
                        "the full PNGs, or pass delivery='path' if you share the server's disk."
                    )
            if not images:
                images = await in_thread(self._previews, ids, fixed)
        images = await in_thread(self._fit, text, notes, links, images, structured)
        if ids and delivery != "none" and not images and not any("left out" in n for n in notes):
            notes.append(f"No room for inline images within {self._limits_text()}; read the image:// links.")
        content: list[Any] = [TextContent(type="text", text=self._text(text, notes)), *images, *links]
        return CallToolResult(content=content, structured_content=structured)

    def _fit(
        self,
        text: str,
        notes: list[str],
        links: list[ResourceLink],
        images: list[ImageContent],
        structured: dict[str, Any],
    ) -> list[ImageContent]:
        """Previews are sized to fit; this is the guarantee: leave images out rather than go over."""
        kept = list(images)
        while kept and self._over(self._measure(self._text(text, notes), links, kept, structured)):
            kept.pop()
            if not any("left out" in note for note in notes):
                notes.append(
                    "Some inline images were left out to stay within this client's limits "
                    f"({self._limits_text()}); read the image:// resources instead."
                )
        return kept

    @staticmethod
    def _text(text: str, notes: list[str]) -> str:
        return "\n".join([text, *notes])

    def _limits_text(self) -> str:
        parts = [f"{self.max_bytes + ENVELOPE_BYTES} bytes"]
        if self.limits.max_result_tokens is not None:
            parts.append(f"about {self.limits.max_result_tokens} tokens")
        return " and ".join(parts)

    def _link(self, image_id: str) -> ResourceLink:
        record = self.store.record(image_id)
        return ResourceLink(
            type="resource_link",
            uri=record.uri,
            name=record.id,
            description=f"{record.kind} image, {record.width}x{record.height} PNG",
            mime_type="image/png",
        )

    @staticmethod
    def _measure(
        text: str, links: list[ResourceLink], images: list[ImageContent], structured: dict[str, Any]
    ) -> tuple[int, int]:
        """(bytes of the serialised result, its estimated tokens)."""
        blank = [ImageContent(type="image", data="", mime_type=image.mime_type) for image in images]
        skeleton = CallToolResult(
            content=[TextContent(type="text", text=text), *blank, *links], structured_content=structured
        ).model_dump_json(by_alias=True, exclude_none=True)
        data = sum(len(image.data) for image in images)
        tokens = text_tokens(len(skeleton)) + sum(
            image_tokens(*Image.open(io.BytesIO(base64.b64decode(image.data))).size, len(image.data))
            for image in images
        )
        return len(skeleton.encode()) + data, tokens

    def _over(self, measured: tuple[int, int]) -> bool:
        size, tokens = measured
        return size > self.max_bytes or (self.max_tokens is not None and tokens > self.max_tokens)

    def _room(self, fixed: tuple[int, int], count: int) -> int:
        """Base64 characters each of ``count`` images may take, after the text and JSON."""
        block = 64  # an image block's JSON around its data
        room = (self.max_bytes - fixed[0]) // count - block
        if self.max_tokens is not None:
            room = min(room, (self.max_tokens - fixed[1]) * CHARS_PER_TOKEN // count - block)
        return room

    def _full(self, ids: list[str], fixed: tuple[int, int]) -> list[ImageContent]:
        """The stored PNGs, when all of them fit; else nothing."""
        records = [self.store.record(image_id) for image_id in ids]
        if any(max(r.width, r.height) > self.limits.max_image_side for r in records):
            return []
        on_disk = sum(self.store.png_path(image_id).stat().st_size for image_id in ids)
        if on_disk * 4 // 3 > self.max_bytes - fixed[0]:
            return []  # clearly too big: not worth reading
        pngs = [self.store.read_png(image_id) for image_id in ids]
        images = [
            ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png")
            for png in pngs
        ]
        return [] if self._over(_plus(self._measure("", [], images, {}), fixed)) else images

    def _previews(self, ids: list[str], fixed: tuple[int, int]) -> list[ImageContent]:
        per_image = self._room(fixed, len(ids)) * 3 // 4
        if per_image < MIN_PREVIEW_BYTES:
            return []
        out = []
        for image_id in ids:
            preview = encode_preview(
                self.store.open(image_id),
                max_side=min(self.settings.preview_max_side, self.limits.max_image_side),
                max_bytes=per_image,
                fmt=self.settings.preview_format,
            )
            out.append(
                ImageContent(
                    type="image", data=base64.b64encode(preview.data).decode(), mime_type=preview.mime_type
                )
            )
        return out


MIN_PREVIEW_BYTES = 1_500
"""Smaller than this, a preview (64 px, low quality) is not worth its place."""


def _plus(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] + b[0], a[1] + b[1]


def _shows_images(name: str, result_model: type[Result]) -> bool:
    """Whether a tool's results can carry inline images (and so take ``delivery``)."""
    return result_model.preview_ids is not Result.preview_ids and name != "cancel_job"


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
    options = RenderOptions if _shows_images(name, result_model) else None

    async def handler(ctx: Context, **arguments: Any) -> CallToolResult | InputRequiredResult:
        try:
            rendering = RenderOptions.model_validate(
                {key: arguments.pop(key) for key in RenderOptions.model_fields if key in arguments}
            )
            given = _given.get()
            params = params_model.model_validate(
                {k: v for k, v in arguments.items() if given is None or k in given}
            )
        except ValidationError as exc:
            raise ToolError(_friendly_validation(name, exc)) from None
        if (rendering.delivery or config.server.delivery) == "path" and config.server.path_delivery is False:
            raise ToolError(
                f"Invalid arguments for {name}: delivery='path' is off on this server (its clients do not "
                "share its disk, e.g. over HTTP); use 'preview', 'full' or 'none' and read image:// "
                "resources."
            )

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await ctx.report_progress(done, total, message)

        services = services_of(ctx)
        approver = SpendingApprover(ctx, name)
        if not as_job:
            try:
                with spending_approver(approver):
                    result = await implementation(params, services, progress)
            except ConfirmationPending:
                return approver.input_required() or _never_asked(name)
            except Exception as exc:
                raise ToolError(describe_failure(name, exc)) from exc
            return await Renderer(config, services.store).render(result, rendering.delivery)

        async def run(job_progress: Progress) -> Result:
            with spending_approver(approver):
                return await implementation(params, services, job_progress)

        # Run as a job: if it outlasts the wait, hand back a job id instead of making the client wait.
        # Paid models are confirmed before any work; the wait starts over once the user has answered.
        jobs = services.jobs
        wait = config.server.pool.job_wait_seconds
        job = jobs.start(name, run)
        try:
            finished = await jobs.wait(job, wait, progress)
            while not finished and approver.asking:
                await approver.idle.wait()
                finished = await jobs.wait(job, wait, progress)
        except anyio.get_cancelled_exc_class():
            jobs.cancel(job)  # the client cancelled the call: stop the work too
            raise
        finally:
            approver.closed = True
        question = approver.input_required()
        if question is not None:
            return question  # the job stopped before any work to ask; the client calls again
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
        return await Renderer(config, services.store).render(job.result, rendering.delivery)

    output_model: Any = result_model
    if as_job:

        class Output(RootModel[result_model | JobPending]):  # type: ignore[valid-type]
            # The tool's result, or a job handle when the call outlasts the server's wait.
            model_config = ConfigDict(
                json_schema_extra={"type": "object"}, title=f"{result_model.__name__}OrJob"
            )

        output_model = Output
    server.tool_parameters[name] = frozenset(
        {*params_model.model_fields, *(options.model_fields if options is not None else ())}
    )
    handler.__signature__ = _signature_from(params_model, output_model, options)  # type: ignore[attr-defined]
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


def _never_asked(tool: str) -> CallToolResult:
    raise ToolError(f"{tool} stopped for a confirmation that was never asked; call it again")


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
    store = ImageStore(config.server.store_dir, fsync=config.server.store_fsync)
    resolver = ImageResolver(
        store, config.server.allowed_roots, config.server.limits, urls=config.server.urls
    )
    pool = ModelPool(config, devices)
    jobs = JobManager(
        pool.start_background,
        ttl_seconds=config.server.pool.job_ttl_seconds,
        describe_failure=describe_failure,
    )
    safety = SafetyGate(config.server.safety) if config.server.safety.enabled else None
    return Services(
        config=config,
        store=store,
        resolver=resolver,
        pool=pool,
        jobs=jobs,
        hub=ModelHub(config, pool, HostedConnections(config.hosted)),
        safety=safety,
    )


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
        for reason in config.profile_reasons:
            logger.info("profile %s: %s", config.profile, reason)
        async with created.pool.running():
            running.append(created)
            try:
                yield created
            finally:
                running.remove(created)
                with anyio.CancelScope(shield=True):
                    await created.hub.aclose()

    auth, token_verifier = auth_for(config)  # used by the HTTP transport only
    server = MultimodalServer(
        name="multimodal-mcp",
        title="multimodal-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        auth=auth,
        token_verifier=token_verifier,
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
