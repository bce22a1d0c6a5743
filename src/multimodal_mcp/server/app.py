"""The MCP server: its tools, resources and lifespan.

The ``server`` package is the only one that imports ``mcp`` (besides the demo client):
registration.py registers each tool from its implementation and params model, consent.py asks the
user to confirm paid calls, rendering.py turns results into MCP content, http.py is the HTTP transport.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import cast

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.server.request_state import RequestStateSecurity

from multimodal_mcp import __version__
from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.backends.safety import SafetyGate, check_available
from multimodal_mcp.config import Config
from multimodal_mcp.errors import NotFound
from multimodal_mcp.handles import SafetyChecker
from multimodal_mcp.hub import Engine, ModelHub
from multimodal_mcp.imaging.inputs import ImageResolver
from multimodal_mcp.imaging.store import open_image_store, validate_id
from multimodal_mcp.job_board import JobBoard
from multimodal_mcp.jobs import JobManager, describe_failure
from multimodal_mcp.pool import Device, ModelPool, discover_devices
from multimodal_mcp.pool.devices import GiB
from multimodal_mcp.server.http import auth_for
from multimodal_mcp.server.prompts import PROMPTS
from multimodal_mcp.server.registration import (
    IMAGE_RESOURCE_MIME,
    Implementation,
    MultimodalServer,
    register_prompt,
    register_tool,
)
from multimodal_mcp.server.views import apps_extension, register_view_tools, tool_meta
from multimodal_mcp.tools.clip_classify import ClipClassifyParams, clip_classify
from multimodal_mcp.tools.common import Params, Result, Services, in_thread
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
list_models shows the models, their defaults and capabilities (which arguments each takes).
Full-resolution images are resources at image://<id>; results show small previews (delivery='none'
for text only, 'full' for the full image, 'path' for its local file path). verify='fast' on
generate_image scores the result against the prompt.
A call that runs long returns a job id instead of its result: call get_job(job_id, wait_seconds)
until it is done. Models marked paid in list_models cost money per call; the server may ask
the user to confirm, and a declined call returns an error: do not retry it unasked."""


def create_services(
    config: Config,
    devices: list[Device] | None = None,
    engine: Engine | None = None,
    job_board: JobBoard | None = None,
) -> Services:
    """Everything the tools share. Creates the store directory; loads no model.

    ``devices`` defaults to what is discovered (GPUs, then the CPU) when first needed, which may
    import torch: in the background once the pool runs, so the server answers meanwhile (see
    :meth:`ModelPool.discover`); tests pass their own.
    ``engine`` runs the local models elsewhere (``serve --engine ray``); None: in this process's pool.
    ``job_board``: where jobs are mirrored for the other fronts (see :mod:`multimodal_mcp.job_board`).
    """
    pool_settings = config.server.pool
    cpu_budget = pool_settings.cpu_budget_gib

    def discover() -> list[Device]:
        return discover_devices(
            config.server.device,
            gpu_headroom_bytes=int(pool_settings.gpu_headroom_gib * GiB),
            cpu_budget_bytes=int(cpu_budget * GiB) if cpu_budget is not None else None,
        )

    store = open_image_store(config.server.store_dir, config.server.store, fsync=config.server.store_fsync)
    resolver = ImageResolver(
        store, config.server.allowed_roots, config.server.limits, urls=config.server.urls
    )
    pool = ModelPool(config, devices if devices is not None else discover)
    jobs = JobManager(
        pool.start_background,
        ttl_seconds=config.server.pool.job_ttl_seconds,
        describe_failure=describe_failure,
        max_retained_per_principal=config.server.pool.max_jobs_per_principal,
        max_retained_bytes=config.server.pool.max_job_bytes,
        board=job_board,
    )
    store.guard(jobs.held_images)  # retention never removes what a running or retained job refers to
    safety: SafetyChecker | None = SafetyGate(config.server.safety) if config.server.safety.enabled else None
    remote_safety = getattr(engine, "safety_checker", None)  # the Ray engine may run the filter
    if safety is not None and remote_safety is not None:
        safety = remote_safety() or safety
    return Services(
        config=config,
        store=store,
        resolver=resolver,
        pool=pool,
        jobs=jobs,
        hub=ModelHub(config, pool, HostedConnections(config.hosted), engine),
        safety=safety,
    )


STAGED_DRAIN_SECONDS = 30.0
"""At shutdown, how long the server waits for photos still being converted (imaging.staging)."""
_GEN = ("text_to_image", "prompt_rewrite", "verify")
_SEE = ("vlm", "clip")
_TAKES_IMAGES = frozenset({"controlled_generate", "clip_classify", "describe_image", "compare_images"})


def _reaches_out(config: Config, tasks: tuple[str, ...], takes_images: bool) -> bool:
    """Whether a tool may talk to the world beyond this server (MCP's ``openWorldHint``): a hosted
    model of a task it uses can be chosen (for ``prompt_rewrite``: the configured rewriter; for
    ``verify``, verify="thorough": the default VLM and the rewriter, which lists the facts), or it
    fetches the image URLs named in its arguments (``[server.urls]``)."""
    if takes_images and config.server.urls.enabled:
        return True
    rewriter = config.defaults.get("prompt_rewrite")
    verifiers = {config.defaults.get("vlm"), rewriter} if "verify" in tasks else set()
    return any(
        spec.hosted
        for name, spec in config.models.items()
        if spec.task in tasks or (name == rewriter and "prompt_rewrite" in tasks) or name in verifiers
    )


def build_server(
    config: Config,
    services: Services | None = None,
    *,
    engine: Engine | None = None,
    job_board: JobBoard | None = None,
    request_state_keys: Sequence[bytes] | None = None,
) -> MultimodalServer:
    """The MCP server over ``config``. Services are created in the lifespan unless given (tests).
    ``engine``: where local models run when not in this process (see :class:`ModelHub`);
    ``job_board``: the job board shared with other fronts; ``request_state_keys``: the secrets
    (32 bytes or more each; the first seals) that seal the ``requestState`` of protocol 2026-07-28
    input rounds, shared by every front that may receive a round's answer (default: a key of this
    process only, see the SDK's ``RequestStateSecurity``).

    Raises:
        ConfigError: the safety filter is on but its classifier is not installed.
    """
    if services is None:
        check_available(config.server.safety)

    running: list[Services] = []  # the lifespan's services, for resources that get no request context

    @asynccontextmanager
    async def lifespan(_: MCPServer[Services]) -> AsyncIterator[Services]:
        created = (
            services
            if services is not None
            else await anyio.to_thread.run_sync(
                partial(create_services, config, engine=engine, job_board=job_board)
            )
        )
        logger.info(  # the devices are logged once discovered (pool.core)
            "multimodal-mcp %s: profile %s, store %s, safety filter %s",
            __version__,
            config.profile,
            config.server.store_dir,
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
                    # Photos stored staged (imaging.staging) are converted before the process ends;
                    # any left past the wait are converted by the next server to open the store.
                    await anyio.to_thread.run_sync(created.store.drain, STAGED_DRAIN_SECONDS)
                    created.store.staging.close()

    auth, token_verifier = auth_for(config)  # used by the HTTP transport only
    server = MultimodalServer(
        name="multimodal-mcp",
        title="multimodal-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        auth=auth,
        token_verifier=token_verifier,
        extensions=[apps_extension()],  # MCP Apps views: multimodal_mcp.views
        request_state_security=RequestStateSecurity(keys=list(request_state_keys))
        if request_state_keys
        else None,
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
    # (implementation, params, result, title, read-only, runs as a job, the tasks of the models it uses)
    tools: list[tuple[Implementation, type[Params], type[Result], str, bool, bool, tuple[str, ...]]] = [
        (generate_image, GenerateImageParams, GenerateImageResult, "Generate image", False, True, _GEN),
        (
            controlled_generate,
            ControlledGenerateParams,
            ControlledGenerateResult,
            "ControlNet",
            False,
            True,
            _GEN,
        ),
        (
            clip_classify,
            ClipClassifyParams,
            ClipClassifyResult,
            "Zero-shot classify (CLIP)",
            True,
            True,
            ("clip",),
        ),
        (describe_image, DescribeImageParams, DescribeImageResult, "Describe image (VLM)", True, True, _SEE),
        (compare_images, CompareImagesParams, CompareImagesResult, "Compare two images", True, True, _SEE),
        (list_models, ListModelsParams, ListModelsResult, "List models", True, False, ()),
        (get_job, GetJobParams, JobResult, "Get a long-running call's result", True, False, ()),
        (cancel_job, CancelJobParams, JobResult, "Cancel a long-running call", False, False, ()),
    ]
    for implementation, params_model, result_model, title, read_only, as_job, tasks in tools:
        register_tool(
            server,
            config,
            services_of,
            implementation,
            params_model,
            result_model,
            title=title,
            read_only=read_only,
            as_job=as_job,
            open_world=_reaches_out(config, tasks, implementation.__name__ in _TAKES_IMAGES),
            meta=tool_meta(implementation.__name__),
        )
    register_view_tools(server, config, services_of)

    for function, prompt_title in PROMPTS:
        register_prompt(server, function, title=prompt_title)

    @server.resource(
        "image://{image_id}",
        name="image",
        title="Stored image",
        description="A full-resolution image the server made (PNG) or received (PNG, JPEG or WebP), by id; "
        "each read carries the stored file's own MIME type.",
        mime_type=IMAGE_RESOURCE_MIME,
    )
    async def read_image(image_id: str, ctx: Context) -> bytes:
        try:
            validate_id(image_id)
            data, _ = await in_thread(services_of(ctx).store.read_bytes, image_id)
            return data
        except NotFound as exc:
            raise ResourceNotFoundError(str(exc)) from None

    @server.resource(
        "pool://status",
        name="pool-status",
        title="Model pool status",
        description="Devices with budgets and use; models with location, size and queue; hit/miss counts; "
        "under --engine ray, each replica's pool too (deployment, replica, node, models, memory, queue).",
        mime_type="application/json",
    )
    async def pool_status() -> str:
        if not running:
            raise ResourceNotFoundError("the server is not running")
        pool = running[-1].pool
        await pool.discover()
        status = pool.status()
        replica_status = getattr(running[-1].hub.engine, "replica_status", None)
        if replica_status is not None:  # the Ray engine: each replica's pool, gathered with a timeout
            status["cluster"] = await replica_status()
        return json.dumps(status, indent=1)

    return server
