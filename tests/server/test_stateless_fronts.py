"""Several front replicas on stateless HTTP (what ``serve --engine ray --front-replicas N`` runs):
two servers over one store, and a client whose requests alternate between them, request by request,
as a load balancer may send them. Protocol 2026-07-28 rounds cross replicas through a shared
``requestState`` key; clients of 2025-11-25 keep working but are never asked mid-call.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from multimodal_mcp.config import Config, SpendingSettings
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.server.connections import uvicorn_config
from multimodal_mcp.server.http import http_app

from helpers import cpu_only, data_uri, photo
from http_helpers import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.model]


class Alternating(httpx2.AsyncBaseTransport):
    """Sends each HTTP request to the next of ``ports`` in turn (a round-robin load balancer)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.sent: list[int] = []
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[len(self.sent) % len(self.ports)]
        self.sent.append(port)
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class User:
    def __init__(self) -> None:
        self.questions: list[str] = []

    async def __call__(self, context: Any, params: Any) -> Any:
        from mcp.types import ElicitResult

        self.questions.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})


def paid_clip(config: Config, default_without_elicitation: str = "deny") -> Config:
    models = {
        name: spec.model_copy(update={"paid": True}) if name == "tiny-clip" else spec
        for name, spec in config.models.items()
    }
    spending = SpendingSettings(confirm="ask", default_without_elicitation=default_without_elicitation)
    server = config.server.model_copy(update={"spending": spending})
    return config.model_copy(update={"models": models, "server": server})


@asynccontextmanager
async def two_fronts(config: Config, keys: list[bytes]) -> AsyncIterator[tuple[list[int], list[Any]]]:
    """Two stateless fronts over one store directory (each its own services and pool), sealing
    ``requestState`` with ``keys[i]``; yields their ports and services."""
    ports, made = [], []
    async with anyio.create_task_group() as tg, AsyncExitStack():
        servers = []
        for key in keys:
            services = create_services(config, devices=cpu_only())
            server = build_server(config, services, request_state_keys=[key])
            app = http_app(server, config, host="127.0.0.1", stateless=True)
            port = free_port()
            uv = uvicorn.Server(uvicorn_config(app, config.server.http, host="127.0.0.1", port=port))
            tg.start_soon(uv.serve)
            servers.append(uv)
            ports.append(port)
            made.append(services)
        with anyio.fail_after(30):
            while not all(s.started for s in servers):  # noqa: ASYNC110 (uvicorn offers a flag)
                await anyio.sleep(0.02)
        try:
            yield ports, made
        finally:
            for uv in servers:
                uv.should_exit = True


def client(ports: list[int], mode: str, user: User | None = None) -> tuple[Client, Alternating]:
    balancer = Alternating(ports)
    transport = streamable_http_client(
        f"http://127.0.0.1:{ports[0]}/mcp", http_client=httpx2.AsyncClient(transport=balancer, timeout=60)
    )
    return Client(transport, mode=mode, elicitation_callback=user, read_timeout_seconds=60), balancer  # type: ignore[arg-type]


def classify_args() -> dict[str, Any]:
    return {"image": data_uri(photo(size=48)), "labels": ["a cat", "a cup"], "model": "tiny-clip"}


async def test_a_confirmation_round_answered_at_another_front_is_accepted(config: Config) -> None:
    key = secrets.token_bytes(32)
    async with two_fronts(paid_clip(config), [key, key]) as (ports, _):
        user = User()
        mcp, balancer = client(ports, "auto", user)
        async with mcp:
            assert mcp.protocol_version == "2026-07-28"
            result = await mcp.call_tool("clip_classify", classify_args())
        assert not result.is_error, result.content
        assert len(user.questions) == 1 and "tiny-clip" in user.questions[0]
        assert set(balancer.sent) == set(ports), "both fronts answered part of the exchange"


async def test_without_a_shared_key_the_second_round_is_refused(config: Config) -> None:
    """The negative control: each front sealing with its own key cannot open the other's state."""
    async with two_fronts(paid_clip(config), [secrets.token_bytes(32), secrets.token_bytes(32)]) as (
        ports,
        _,
    ):
        mcp, _ = client(ports, "auto", User())
        async with mcp:
            try:
                result = await mcp.call_tool("clip_classify", classify_args())
                refused = result.is_error
            except Exception:  # the SDK raises the JSON-RPC error of an unopenable requestState
                refused = True
        assert refused


async def test_an_older_client_works_across_fronts_and_is_never_asked_mid_call(config: Config) -> None:
    key = secrets.token_bytes(32)
    async with two_fronts(paid_clip(config), [key, key]) as (ports, _):
        user = User()
        mcp, balancer = client(ports, "legacy", user)
        async with mcp:
            assert mcp.protocol_version == "2025-11-25"
            tools = await mcp.list_tools()
            assert "clip_classify" in {t.name for t in tools.tools}
            refused = await mcp.call_tool("clip_classify", classify_args())
            free = await mcp.call_tool("clip_classify", {**classify_args(), "model": "tiny-siglip"})
            steps: list[float] = []

            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                steps.append(done)

            made = await mcp.call_tool(
                "generate_image",
                {"prompt": "a red cube", "width": 64, "height": 64, "steps": 6, "seed": 3},
                progress_callback=on_progress,
            )
        assert refused.is_error and "before 2026-07-28" in refused.content[0].text  # type: ignore[union-attr]
        assert "nothing was spent" in refused.content[0].text  # type: ignore[union-attr]
        assert user.questions == [], "a stateless front cannot ask a 2025-11-25 client mid-call"
        assert not free.is_error, free.content
        assert not made.is_error and steps, "progress reaches an older client on stateless HTTP"
        assert set(balancer.sent) == set(ports)


async def test_an_image_stored_by_one_front_is_read_by_the_other(config: Config) -> None:
    key = secrets.token_bytes(32)
    async with two_fronts(config, [key, key]) as (ports, _):
        mcp, balancer = client(ports, "2026-07-28")
        async with mcp:
            first = await mcp.call_tool("clip_classify", classify_args())
            assert not first.is_error, first.content
            uri = first.structured_content["image"]["uri"]  # type: ignore[index]
            served_by = balancer.sent[-1]
            again = await mcp.call_tool("clip_classify", {**classify_args(), "image": uri})
            assert balancer.sent[-1] != served_by
        assert not again.is_error, again.content
        assert again.structured_content["image"]["uri"] == uri  # type: ignore[index]
