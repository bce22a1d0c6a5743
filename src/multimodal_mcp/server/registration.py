"""Tool registration: each tool from its implementation and its pydantic params model.

The MCP input schema is derived from the same pydantic fields the implementation validates against
(one source of truth), and the implementation gets a params object that knows which arguments the
client gave (``model_fields_set``), as opposed to those left at their defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Annotated, Any

import anyio
from mcp.server.apps import client_supports_apps
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.server.mcpserver.prompts import Prompt
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    CallToolResult,
    GetPromptResult,
    InputRequiredResult,
    ListToolsResult,
    PromptMessage,
    TextContent,
    ToolAnnotations,
)
from mcp.types import Tool as MCPTool
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, validate_call

from multimodal_mcp.config import Config
from multimodal_mcp.errors import ConfirmationPending
from multimodal_mcp.imaging.admission import call_pixel_budget
from multimodal_mcp.imaging.compact import mime_of
from multimodal_mcp.jobs import JobPending, describe_failure
from multimodal_mcp.logs import prefix
from multimodal_mcp.principals import LOCAL, acting_as
from multimodal_mcp.server.consent import SpendingApprover
from multimodal_mcp.server.http import principal_of_request
from multimodal_mcp.server.prompts import ATTEMPTS_PATTERN
from multimodal_mcp.server.rendering import Renderer, RenderOptions
from multimodal_mcp.server.schemas import lean_output_schema, portable_input_schema
from multimodal_mcp.tools.common import Params, Progress, Result, Services, spending_approver
from multimodal_mcp.tools.jobs import JOB_ID_PATTERN

Implementation = Callable[[Any, Services, Progress | None], Awaitable[Result]]
MAX_URI_CHARS = 2048
"""Longer resource URIs are refused before any template is matched against them."""
IMAGE_RESOURCE_MIME = "image/*"
"""The MIME type the ``image://`` template declares; each read gets its file's own type."""


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


PATTERN_WORDS = {
    JOB_ID_PATTERN: "must be a job id as its job handle gives it: 16 hexadecimal digits (0-9, a-f)",
    ATTEMPTS_PATTERN: "must be a whole number from 1 to 5, or empty for the default (3)",
}
"""What each argument pattern asks for, in words: errors never show a client the regular expression."""


def server_limits(limits: Any) -> dict[str, tuple[int, str]]:
    """The arguments whose schema bound a server setting may lower: argument -> (the largest value
    this server takes, the setting's name). Width and height are kept multiples of 8."""
    side = limits.max_side - limits.max_side % 8
    return {
        "width": (side, "max_side"),
        "height": (side, "max_side"),
        "steps": (limits.max_steps, "max_steps"),
        "num_images": (limits.max_images, "max_images"),
        "max_tokens": (limits.max_tokens, "max_tokens"),
    }


def _friendly_validation(
    tool: str,
    exc: ValidationError,
    what: str = "arguments",
    limits: Mapping[str, tuple[int, str]] | None = None,
) -> str:
    """``exc``'s problems as sentences: bounds with a value that passes, patterns in words, and an
    argument over the schema's bound named with this server's own lower limit (``limits``, see
    :func:`server_limits`), so that the value suggested is one the server takes."""
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        message = err["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        ctx = err.get("ctx") or {}
        step = ctx.get("multiple_of")
        bound = ctx.get("le")
        own = (limits or {}).get(where)
        if err["type"] == "multiple_of" and isinstance(step, int) and isinstance(err.get("input"), int):
            value = err["input"]  # name the two nearest values that pass
            low, high = value // step * step, (value // step + 1) * step
            message += f": use {where}={low} or {where}={high}" if low > 0 else f": use {where}={high}"
        elif err["type"] == "string_pattern_mismatch":
            message = PATTERN_WORDS.get(
                str(ctx.get("pattern")), "is not in the form this argument takes (see its description)"
            )
        elif err["type"] == "less_than_equal" and own and isinstance(bound, int) and own[0] < bound:
            message = f"at most {own[0]} on this server (its {own[1]} setting): use {where}={own[0]} or less"
        problems.append(f"{where}: {message}")
    return (
        f"Invalid arguments for {tool}: "
        + "; ".join(problems)
        + (". See the tool's input schema for the bounds." if what == "arguments" else ".")
    )


def _principal(context: Any) -> str:
    if context is None:
        return LOCAL
    try:
        request = context.request_context.request
    except ValueError:  # no request context: an in-process call
        return LOCAL
    return principal_of_request(request)


_sent: ContextVar[frozenset[str] | None] = ContextVar("multimodal_mcp_sent_arguments", default=None)
"""Names of the arguments the client sent with the tool call in progress.

The SDK has no public way to register a tool with a ready-made input schema and a handler that
receives the arguments as sent: ``MCPServer.add_tool`` (and ``Tool.from_function`` behind it) validate
them against the handler's signature and call it with every parameter, defaults filled in. Only
``MCPServer.call_tool``, which :class:`MultimodalServer` overrides, sees the arguments as the client
sent them; it notes their names here for the handler, which gives only those to the params model."""


@contextmanager
def _sending(arguments: dict[str, Any]) -> Iterator[None]:
    token = _sent.set(frozenset(arguments))
    try:
        yield
    finally:
        _sent.reset(token)


def _as_sent(arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` as the SDK parsed them (JSON strings decoded, defaults filled in), narrowed to
    the ones the client sent."""
    sent = _sent.get()
    if sent is None:  # not called through MultimodalServer.call_tool: take them all, as given
        return arguments
    return {key: value for key, value in arguments.items() if key in sent}


def model_visible(tool: MCPTool) -> bool:
    """Whether a model may see ``tool``: every tool but those an MCP Apps view alone calls
    (``_meta.ui.visibility`` without "model")."""
    return "model" in ((tool.meta or {}).get("ui") or {}).get("visibility", ["model"])


class MultimodalServer(MCPServer[Services]):
    """MCPServer that refuses unknown arguments and whose argument errors read as sentences,
    without echoing the caller's data. Each call and resource read runs as its caller's principal,
    which owns what the call makes (see ``multimodal_mcp.principals``). A tool's params object holds
    in ``model_fields_set`` exactly the arguments the client sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tool_parameters: dict[str, frozenset[str]] = {}
        self.prompt_functions: dict[str, Callable[..., str]] = {}
        self.limits: dict[str, tuple[int, str]] = {}
        """This server's own limits below the schema's bounds (:func:`server_limits`), named in
        errors for an argument past the schema's bound (set when tools are registered)."""

    async def run_stdio_async(self) -> None:
        """Serve over stdio, answering malformed lines as JSON-RPC says (see ``server/stdio.py``)."""
        from multimodal_mcp.server.stdio import serve_stdio

        await serve_stdio(self._lowlevel_server)

    async def list_tools(self) -> list[MCPTool]:
        """The tools with their schemas as every converter takes them, lean (see schemas.py)."""
        return [
            tool.model_copy(
                update={
                    "input_schema": portable_input_schema(tool.input_schema),
                    "output_schema": lean_output_schema(tool.output_schema) if tool.output_schema else None,
                }
            )
            for tool in await super().list_tools()
        ]

    async def read_resource(self, uri: Any, context: Any = None) -> Any:
        if len(str(uri)) > MAX_URI_CHARS:  # not matched against the templates, not echoed whole
            raise ResourceNotFoundError(
                f"Unknown resource: {prefix(uri)}; resources: image://<id>, pool://status"
            )
        with acting_as(_principal(context)):
            try:
                contents = await super().read_resource(uri, context)
            except ResourceNotFoundError as exc:
                raise ResourceNotFoundError(prefix(exc, 200)[1:-1]) from None
        if isinstance(contents, InputRequiredResult):
            return contents
        # A template declares one MIME type; a stored image is a PNG, a JPEG or a WebP: each read
        # says which (from the bytes' signature).
        return [
            replace(item, mime_type=mime_of(item.content) or item.mime_type)
            if item.mime_type == IMAGE_RESOURCE_MIME and isinstance(item.content, bytes)
            else item
            for item in contents
        ]

    async def _handle_list_tools(self, ctx: Any, params: Any) -> ListToolsResult:
        # Tools only an MCP Apps view calls are listed to clients that render views, and to no other.
        tools = await self.list_tools()
        if not client_supports_apps(ctx):
            tools = [tool for tool in tools if model_visible(tool)]
        return ListToolsResult(tools=tools)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        with acting_as(_principal(context)), _sending(arguments):
            return await self._call_tool(name, arguments, context)

    async def _call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        known = self.tool_parameters.get(name)
        if known is None:
            # A protocol error (the spec's -32602), not a tool result: there is no such tool to fail.
            raise MCPError(
                INVALID_PARAMS,
                f"Unknown tool: {name[:64]!r}; tools: {', '.join(sorted(self.tool_parameters))}",
            )
        unknown = sorted(set(arguments) - known)
        if unknown:
            named = ", ".join(prefix(argument, 40) for argument in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ToolError(
                f"Invalid arguments for {name}: unknown argument(s) {named}{more}; "
                f"accepted: {', '.join(sorted(known or ())) or 'none'}"
            )
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if isinstance(exc.__cause__, ValidationError):
                raise ToolError(
                    _friendly_validation(name, exc.__cause__, limits=self.limits)
                ) from exc.__cause__
            raise

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Any = None
    ) -> GetPromptResult:
        """The prompt's message. An unknown prompt or a bad argument is the client's mistake: a -32602
        error that says what is accepted, and no traceback in the log."""
        function = self.prompt_functions.get(name)
        if function is None:
            known = ", ".join(sorted(self.prompt_functions)) or "none"
            raise MCPError(INVALID_PARAMS, f"Unknown prompt: {name[:64]!r}; prompts: {known}")
        try:
            text = validate_call(function)(**(arguments or {}))
        except ValidationError as exc:
            raise MCPError(INVALID_PARAMS, _friendly_validation(name, exc, "prompt")) from None
        return GetPromptResult(
            description=inspect.getdoc(function),
            messages=[PromptMessage(role="user", content=TextContent(type="text", text=text))],
        )


def register_prompt(server: MultimodalServer, function: Callable[..., str], *, title: str) -> None:
    """Registers ``function`` (named by its function name, described by its docstring; its string
    parameters, with their descriptions, are the arguments) as a prompt whose one user message is
    what it returns."""
    server.prompt_functions[function.__name__] = function
    server.add_prompt(Prompt.from_function(function, name=function.__name__, title=title))


def _shows_images(name: str, result_model: type[Result]) -> bool:
    """Whether a tool's results can carry inline images (and so take ``delivery``)."""
    return result_model.preview_ids is not Result.preview_ids and name != "cancel_job"


def register_tool(
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
    open_world: bool = False,
    meta: dict[str, Any] | None = None,
) -> None:
    """Registers ``implementation`` (named by its function name, described by its docstring) on
    ``server``, with an input schema from ``params_model`` (plus ``delivery`` when its results show
    images) and an output schema from ``result_model`` (or a job handle, ``as_job``). ``meta``: the
    tool's ``_meta`` (an MCP Apps view it declares, see server/views.py).

    A call validates the arguments the client sent into ``params_model`` (errors read as sentences),
    runs the implementation with the call's services, asking for spending consent when it makes paid
    calls, and renders the result. ``as_job``: a call that outlasts ``pool.job_wait_seconds`` returns
    a job handle instead.
    """
    name = implementation.__name__
    options = RenderOptions if _shows_images(name, result_model) else None
    server.limits = server_limits(config.server.limits)

    async def handler(ctx: Context, **arguments: Any) -> CallToolResult | InputRequiredResult:
        # The SDK checked the arguments against the signature below; the params model validates the
        # ones the client sent, so it can tell them from those left at their defaults.
        arguments = _as_sent(arguments)
        try:
            rendering = RenderOptions.model_validate(
                {key: arguments.pop(key) for key in RenderOptions.model_fields if key in arguments}
            )
            params = params_model.model_validate(arguments)
        except ValidationError as exc:
            raise ToolError(_friendly_validation(name, exc, limits=server.limits)) from None
        if (rendering.delivery or config.server.delivery) == "path" and config.server.path_delivery is False:
            raise ToolError(
                f"Invalid arguments for {name}: delivery='path' is off on this server (its clients do not "
                "share its disk, e.g. over HTTP); use 'preview', 'full' or 'none' and read image:// "
                "resources."
            )
        if (rendering.delivery or config.server.delivery) == "path" and config.server.store.url is not None:
            raise ToolError(
                f"Invalid arguments for {name}: delivery='path' needs images on the server's disk, and this "
                "server keeps them in an object store ([server.store] url); use 'preview', 'full' or "
                "'none' and read image:// resources."
            )

        async def progress(done: float, total: float | None, message: str | None) -> None:
            await ctx.report_progress(done, total, message)

        services = services_of(ctx)
        approver = SpendingApprover(ctx, name)
        pixel_limit = config.server.limits.max_input_pixels_per_call
        if not as_job:
            try:
                with spending_approver(approver), call_pixel_budget(pixel_limit):
                    result = await implementation(params, services, progress)
            except ConfirmationPending:
                return approver.input_required() or _never_asked(name)
            except Exception as exc:
                raise ToolError(describe_failure(name, exc)) from exc
            return await Renderer(config, services.store).render(result, rendering.delivery)

        async def run(job_progress: Progress) -> Result:
            with spending_approver(approver), call_pixel_budget(pixel_limit):
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
        rendered = await Renderer(config, services.store).render(job.result, rendering.delivery)
        job.delivered = True
        return rendered

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
            open_world_hint=open_world,
        ),
        meta=meta,
    )


def _never_asked(tool: str) -> CallToolResult:
    raise ToolError(f"{tool} stopped for a confirmation that was never asked; call it again")
