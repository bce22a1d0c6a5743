"""Issue 13, item 2 over a real loopback socket: connections capped and timed out, the open-file
limit raised, sessions capped per principal."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from anyio.abc import SocketStream

from multimodal_mcp.config import Config
from multimodal_mcp.server.app import create_services
from multimodal_mcp.server.connections import FD_RESERVE, connection_cap, raise_fd_limit
from multimodal_mcp.tools.common import Services

from fake_hub import FakeHub, FakeVisionChat, fake_config, fake_handles, fake_services_for
from helpers import cpu_only, data_uri, make_config, photo
from http_helpers import raw_post, serving

pytestmark = pytest.mark.anyio

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-fedcba9876543210xyz"
INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }
).encode()


HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def _config(tmp_path: Path, tiny_dir: Path, **http: Any) -> Config:
    return make_config(tmp_path, tiny_dir, tmp_path, http=http)


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


async def _closed_by_server(sock: SocketStream) -> bool:
    """Waits (up to 30 s) for the server to close ``sock`` without having sent anything."""
    with anyio.fail_after(30):
        try:
            data = await sock.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
            return True
    return not data


async def test_idle_connections_cannot_hold_more_than_the_cap_nor_lock_out_a_client_that_sends(
    tmp_path: Path, tiny_dir: Path
) -> None:
    """The issue's 1,100 idle connections that used up every descriptor, at a scale for a test."""
    config = _config(tmp_path, tiny_dir, max_connections=16, header_timeout_seconds=120)
    async with serving(config, create_services(config, cpu_only())) as url:
        port = _port(url)
        held = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(40)]
        closed: list[SocketStream] = []

        async def watch(sock: SocketStream, count: int, scope: anyio.CancelScope) -> None:
            if await _closed_by_server(sock):
                closed.append(sock)
                if len(closed) == count:
                    scope.cancel()

        async with anyio.create_task_group() as tg:  # 24 make way: never more than 16 open
            for sock in held:
                tg.start_soon(watch, sock, 24, tg.cancel_scope)
        assert len(closed) == 24
        assert {id(s) for s in closed} == {id(s) for s in held[:24]}  # the oldest made way
        response = await raw_post(url, content=INITIALIZE)  # a client that sends is served ...
        assert response.status_code == 200
        async with anyio.create_task_group() as tg:  # ... and the oldest idle one made way for it
            for sock in held[24:]:
                tg.start_soon(watch, sock, 25, tg.cancel_scope)
        assert len(closed) == 25 and closed[-1] is held[24]
        for sock in held:
            await sock.aclose()


async def test_connections_that_send_no_whole_request_head_in_time_are_closed(
    tmp_path: Path, tiny_dir: Path
) -> None:
    config = _config(tmp_path, tiny_dir, header_timeout_seconds=0.5)
    async with serving(config, create_services(config, cpu_only())) as url:
        port = _port(url)
        idle = await anyio.connect_tcp("127.0.0.1", port)
        slow = await anyio.connect_tcp("127.0.0.1", port)
        await slow.send(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ... and the rest never comes
        assert await _closed_by_server(idle)
        assert await _closed_by_server(slow)
        response = await raw_post(url, content=INITIALIZE)  # a whole request in time is served
        assert response.status_code == 200
        await idle.aclose()
        await slow.aclose()


def test_the_open_file_limit_is_raised_to_the_hard_limit_and_the_cap_stays_below_it() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 512:
        pytest.skip("needs a finite hard limit above 512")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        assert raise_fd_limit() == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert connection_cap(1000, 1024) == 1024 - FD_RESERVE
    assert connection_cap(100, 1024) == 100
    assert connection_cap(1000, 64) == 16  # a tiny limit still serves a few


async def test_one_principal_cannot_take_every_session_and_the_refusal_names_the_limit(
    tmp_path: Path, tiny_dir: Path
) -> None:
    """The issue's 10,000 sessions in 25 s from one principal, at a scale for a test."""
    tokens = [{"principal": "alice", "token": ALICE}, {"principal": "bob", "token": BOB}]
    config = _config(tmp_path, tiny_dir, max_sessions_per_principal=3, auth={"tokens": tokens})
    async with serving(config, create_services(config, cpu_only())) as url:
        opened = [await raw_post(url, ALICE, content=INITIALIZE) for _ in range(3)]
        assert [r.status_code for r in opened] == [200, 200, 200]
        assert len({r.headers["mcp-session-id"] for r in opened}) == 3
        refused = await raw_post(url, ALICE, content=INITIALIZE)
        assert refused.status_code == 503
        assert "server.http.max_sessions_per_principal" in refused.json()["error"]["message"]
        assert (await raw_post(url, BOB, content=INITIALIZE)).status_code == 200  # others still get in
        session = opened[0].headers["mcp-session-id"]
        async with httpx2.AsyncClient(timeout=30) as client:  # ending a session frees its place
            headers = {"Authorization": f"Bearer {ALICE}", "mcp-session-id": session}
            deleted = await client.delete(url, headers=headers)
        assert deleted.status_code == 200
        assert (await raw_post(url, ALICE, content=INITIALIZE)).status_code == 200


async def _open_session(client: httpx2.AsyncClient, url: str) -> dict[str, str]:
    opened = await client.post(url, content=INITIALIZE, headers=HEADERS)
    headers = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await client.post(url, content=json.dumps(note), headers=headers)
    return headers


def _call(request_id: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}).encode()


async def test_a_duplicate_in_flight_id_gets_a_json_rpc_error_and_the_first_is_still_answered(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    started, release = anyio.Event(), anyio.Event()
    vlm = fake_hub.fakes["fake-vlm"]
    assert isinstance(vlm, FakeVisionChat)
    plain_answer = vlm.answer

    async def slow_answer(*args: Any, **kwargs: Any) -> Any:
        started.set()
        await release.wait()
        return await plain_answer(*args, **kwargs)

    vlm.answer = slow_answer  # type: ignore[method-assign]
    describe = _call(
        5, "tools/call", {"name": "describe_image", "arguments": {"image": data_uri(photo(size=64))}}
    )
    async with serving(fake_services.config, fake_services) as url, httpx2.AsyncClient(timeout=60) as client:
        headers = await _open_session(client, url)
        replies: list[httpx2.Response] = []
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                replies.append(await client.post(url, content=describe, headers=headers))

            tg.start_soon(first)
            with anyio.fail_after(30):
                await started.wait()
            duplicate = await client.post(url, content=_call(5, "ping"), headers=headers)
            other = await client.post(url, content=_call(6, "ping"), headers=headers)  # other ids go on
            release.set()
        assert duplicate.status_code == 409
        error = duplicate.json()
        assert (
            error["id"] == 5
            and error["error"]["code"] == -32600
            and "already in flight" in error["error"]["message"]
        )
        assert other.status_code == 200 and '"id":6' in other.text.replace(" ", "")
        (answer,) = replies
        assert (
            answer.status_code == 200
            and '"id":5' in answer.text.replace(" ", "")
            and '"result"' in answer.text
        )
        again = await client.post(url, content=_call(5, "ping"), headers=headers)  # the id is free again
        assert again.status_code == 200 and '"result"' in again.text


async def test_requests_in_flight_in_one_session_are_capped_and_the_refusal_names_the_limit(
    tmp_path: Path, allowed_root: Path
) -> None:
    config = fake_config(tmp_path, allowed_root, http={"max_requests_per_session": 1})
    services = fake_services_for(config, fake_handles())
    assert isinstance(services.hub, FakeHub)
    started, release = anyio.Event(), anyio.Event()
    vlm = services.hub.fakes["fake-vlm"]
    assert isinstance(vlm, FakeVisionChat)
    plain_answer = vlm.answer

    async def slow_answer(*args: Any, **kwargs: Any) -> Any:
        started.set()
        await release.wait()
        return await plain_answer(*args, **kwargs)

    vlm.answer = slow_answer  # type: ignore[method-assign]
    describe = _call(
        5, "tools/call", {"name": "describe_image", "arguments": {"image": data_uri(photo(size=64))}}
    )
    async with serving(config, services) as url, httpx2.AsyncClient(timeout=60) as client:
        headers = await _open_session(client, url)
        async with anyio.create_task_group() as tg:
            first: list[httpx2.Response] = []

            async def call() -> None:
                first.append(await client.post(url, content=describe, headers=headers))

            tg.start_soon(call)
            with anyio.fail_after(30):
                await started.wait()
            refused = await client.post(url, content=_call(6, "ping"), headers=headers)
            release.set()
        assert refused.status_code == 429 and refused.json()["id"] == 6
        assert "server.http.max_requests_per_session" in refused.json()["error"]["message"]
        assert first[0].status_code == 200 and '"result"' in first[0].text
        served = await client.post(url, content=_call(7, "ping"), headers=headers)  # room again
        assert served.status_code == 200
