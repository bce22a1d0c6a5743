"""The HTTP transport over a real loopback socket: bearer tokens, per-principal ownership,
Host/Origin checks and the request body limit."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from multimodal_mcp.config import Config
from multimodal_mcp.server.app import create_services
from multimodal_mcp.tools.common import Services

from helpers import call_error, call_ok, cpu_only, data_uri, make_config, photo, read_png, text_of
from http_helpers import http_client, raw_post, serving

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-fedcba9876543210xyz"


@pytest.fixture
def team_config(tmp_path: Path, tiny_dir: Path) -> Config:
    return make_config(
        tmp_path,
        tiny_dir,
        tmp_path,
        http={
            "max_request_bytes": 64 * 1024,
            "auth": {"tokens": [{"principal": "alice", "token": ALICE}, {"principal": "bob", "token": BOB}]},
        },
        pool={"job_wait_seconds": 0.3},
    )


@pytest.fixture
async def team(team_config: Config) -> AsyncIterator[tuple[str, Services]]:
    services = create_services(team_config, cpu_only())
    async with serving(team_config, services) as url:
        yield url, services


async def generate(client: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """generate_image's result, following the job if the call outlasts the server's short wait."""
    out = await call_ok(client, "generate_image", arguments)
    if "job" in out:
        out = (await call_ok(client, "get_job", {"job_id": out["job"]["id"], "wait_seconds": 50}))["result"]
    return out


async def test_calls_without_a_known_bearer_token_get_401_and_known_ones_get_through(team: Any) -> None:
    url, _ = team
    assert (await raw_post(url)).status_code == 401
    assert (await raw_post(url, "not-a-team-token-at-all")).status_code == 401
    assert (await raw_post(url, ALICE[:-1])).status_code == 401
    async with http_client(url, ALICE) as alice:
        await call_ok(alice, "list_models", {})


async def test_one_principals_images_and_jobs_are_not_found_for_another(team: Any) -> None:
    url, services = team
    async with http_client(url, ALICE) as alice, http_client(url, BOB) as bob:
        made = await generate(alice, {"prompt": "alice's lighthouse", "seed": 5})
        uri = made["images"][0]["uri"]
        png = await read_png(alice, uri)

        # Bob gets exactly what an id that never existed gets: nothing reveals that it exists.
        never = "image://" + "0" * 16
        for target in (uri, never):
            with pytest.raises(Exception, match="no image with id") as caught:
                await bob.read_resource(target)
        assert "forbidden" not in str(caught.value).lower()
        theirs = await call_error(bob, "describe_image", {"image": uri})
        unknown = await call_error(bob, "describe_image", {"image": never})
        assert "no image with id" in theirs
        assert theirs.replace(uri[8:], "X") == unknown.replace(never[8:], "X")

        # A long call becomes a job; only its owner can reach it.
        slow = await alice.call_tool("generate_image", {"prompt": "slow", "steps": 60, "seed": 2})
        job_id = slow.structured_content["job"]["id"]
        for tool in ("get_job", "cancel_job"):
            message = await call_error(bob, tool, {"job_id": job_id})
            assert message == (await call_error(bob, tool, {"job_id": "0" * 16})).replace("0" * 16, job_id)
        done = await call_ok(alice, "get_job", {"job_id": job_id, "wait_seconds": 50})
        assert done["job"]["status"] == "done"

        # The same bytes made by both stay private to each, under the same id.
        again = await generate(bob, {"prompt": "alice's lighthouse", "seed": 5})
        assert again["images"][0]["uri"] == uri
        assert await read_png(bob, uri) == png
        assert await read_png(alice, uri) == png
    record = json.loads((services.config.server.store_dir / uri[8:10] / f"{uri[8:]}.json").read_text())
    assert record["owners"] == ["user:alice", "user:bob"]


async def test_no_token_reaches_the_logs_the_store_or_the_principal(
    team: Any, caplog: pytest.LogCaptureFixture
) -> None:
    url, services = team
    caplog.set_level(logging.DEBUG)
    async with http_client(url, ALICE) as alice:
        made = await call_ok(alice, "describe_image", {"image": data_uri(photo("coffee", 32))})
        assert made
        await alice.call_tool("generate_image", {"prompt": "x", "model": "no-such-model"})
    assert (await raw_post(url, BOB + "x")).status_code == 401
    assert ALICE not in caplog.text and BOB not in caplog.text
    for path in services.config.server.store_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert ALICE.encode() not in data and BOB.encode() not in data


async def test_requests_naming_another_host_or_origin_are_refused(team: Any) -> None:
    url, _ = team
    port = url.split(":")[2].split("/")[0]
    assert (await raw_post(url, ALICE, headers={"Host": "attacker.example"})).status_code == 421
    assert (await raw_post(url, ALICE, headers={"Origin": "http://attacker.example"})).status_code == 403
    fine = await raw_post(url, ALICE, headers={"Origin": f"http://localhost:{port}"})
    assert fine.status_code not in (403, 421)


async def test_request_bodies_over_the_limit_get_413_even_without_a_length_header(team: Any) -> None:
    url, _ = team
    big = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": "' + b"a" * 100_000 + b'"}}'
    assert (await raw_post(url, ALICE, content=big)).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]
            await anyio.lowlevel.checkpoint()

    streamed = await raw_post(url, ALICE, content=chunks())
    assert streamed.status_code == 413
    async with http_client(url, ALICE) as alice:  # still serving
        result = await alice.call_tool("list_models", {})
        assert not result.is_error, text_of(result)


async def test_no_outgoing_connection_carries_a_clients_token(
    team: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a call does (models, store, any library), the only socket that ever sends the token
    is the client's own connection to the server."""
    url, _ = team
    server_port = int(url.split(":")[2].split("/")[0])
    carriers: list[Any] = []
    for name in ("send", "sendall"):
        original = getattr(socket.socket, name)

        def spy(self: socket.socket, data: Any, *args: Any, _original: Any = original) -> Any:
            if ALICE.encode() in bytes(data):
                carriers.append(self.getpeername())
            return _original(self, data, *args)

        monkeypatch.setattr(socket.socket, name, spy)
    async with http_client(url, ALICE) as alice:
        made = await generate(alice, {"prompt": "spy", "seed": 3})
        uri = made["images"][0]["uri"]
        await call_ok(alice, "compare_images", {"image_a": uri, "image_b": uri, "describe": True})
    assert carriers  # the spy sees the client sending it...
    assert {peer[1] for peer in carriers} == {server_port}  # ...and nothing else ever does
