"""Serving the real streamable HTTP app on a loopback port inside the test, and clients with tokens."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from multimodal_mcp.config import Config
from multimodal_mcp.server.app import build_server
from multimodal_mcp.server.connections import uvicorn_config
from multimodal_mcp.server.http import http_app
from multimodal_mcp.tools.common import Services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serving(config: Config, services: Services, *, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """The app the CLI serves, on a free loopback port; yields the MCP endpoint URL."""
    app = http_app(build_server(config, services), config, host=host)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, config.server.http, host="127.0.0.1", port=port))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(30):
            while not server.started:  # noqa: ASYNC110 (uvicorn offers a flag, not an event)
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            server.should_exit = True


def http_client(url: str, token: str | None = None, *, timeout: float = 120) -> Client:
    """An MCP client over HTTP, sending ``token`` as a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    transport = streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=timeout))
    return Client(transport, read_timeout_seconds=timeout)


async def raw_post(url: str, token: str | None = None, **kwargs: object) -> httpx2.Response:
    """A bare JSON-RPC POST, for checks below the MCP client (status codes, headers)."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        **({"Authorization": f"Bearer {token}"} if token else {}),
        **kwargs.pop("headers", {}),  # type: ignore[dict-item]
    }
    body = kwargs.pop("content", b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}')
    async with httpx2.AsyncClient(timeout=30) as client:
        return await client.post(url, headers=headers, content=body, **kwargs)  # type: ignore[arg-type]
