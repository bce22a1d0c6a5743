from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest
from mcp import Client

from multimodal_mcp.server.app import build_server, create_services

from helpers import call_error, call_ok, cpu_only, make_config, text_of


@pytest.fixture
async def slow_client(tmp_path: Path, tiny_dir: Path) -> Any:
    """A server that hands back a job after 0.2 s, and a generate_image that takes many steps."""
    config = make_config(tmp_path, tiny_dir, tmp_path, pool={"job_wait_seconds": 0.2, "job_ttl_seconds": 60})
    services = create_services(config, cpu_only())
    async with Client(build_server(config, services)) as client:
        yield client, services


async def _pending(client: Client) -> dict[str, Any]:
    result = await client.call_tool("generate_image", {"prompt": "a slow one", "steps": 100, "seed": 3})
    assert not result.is_error, text_of(result)
    tool = next(t for t in (await client.list_tools()).tools if t.name == "generate_image")
    jsonschema.validate(result.structured_content, tool.output_schema)
    assert "get_job(job_id=" in text_of(result)
    return result.structured_content["job"]


async def test_a_call_past_the_wait_returns_a_job_that_get_job_completes(slow_client: Any) -> None:
    client, _ = slow_client
    job = await _pending(client)
    assert job["status"] == "running" and job["tool"] == "generate_image" and len(job["id"]) == 16
    final = None
    with anyio.fail_after(120):
        while final is None or final["job"]["status"] == "running":
            result = await client.call_tool("get_job", {"job_id": job["id"], "wait_seconds": 5})
            assert not result.is_error, text_of(result)
            final = result.structured_content
    assert final["job"]["status"] == "done" and final["job"]["progress"] == 100
    assert final["result"]["parameters"]["steps"] == 100 and final["result"]["images"][0]["uri"].startswith(
        "image://"
    )
    assert [b.type for b in result.content] == ["text", "image", "resource_link"]
    again = await call_ok(client, "get_job", {"job_id": job["id"], "wait_seconds": 0})  # still retrievable
    assert again["result"] == final["result"]


async def test_get_job_reports_progress_while_the_job_runs(slow_client: Any) -> None:
    client, _ = slow_client
    job = await _pending(client)
    status = await call_ok(client, "get_job", {"job_id": job["id"], "wait_seconds": 0.3})
    if status["job"]["status"] == "running":
        assert status["result"] is None
        assert status["job"]["message"].startswith("tiny-sd15: step ")
    await call_ok(client, "cancel_job", {"job_id": job["id"]})


async def test_cancel_job_stops_the_generation_and_frees_the_device(slow_client: Any) -> None:
    client, services = slow_client
    job = await _pending(client)
    cancelled = await call_ok(client, "cancel_job", {"job_id": job["id"]})
    assert cancelled["job"]["status"] == "cancelled" and cancelled["result"] is None
    # Stopped before the last step (no progress at all yet when the machine is slow to start it).
    assert (cancelled["job"]["progress"] or 0) < 100
    assert services.pool.status()["devices"][0]["running"] is False
    quick = await client.call_tool("generate_image", {"prompt": "quick", "steps": 1, "seed": 1})
    assert not quick.is_error and "images" in quick.structured_content


async def test_unknown_and_expired_jobs_are_not_found(slow_client: Any) -> None:
    client, services = slow_client
    assert "no job '0123456789abcdef'" in await call_error(client, "get_job", {"job_id": "0123456789abcdef"})
    assert "job_id" in await call_error(client, "get_job", {"job_id": "../../etc"})
    job = await _pending(client)
    with anyio.fail_after(120):
        while (await call_ok(client, "get_job", {"job_id": job["id"], "wait_seconds": 5}))["job"][
            "status"
        ] == "running":
            pass
    now = services.jobs.now()
    services.jobs._clock = lambda: now + 61
    assert "finished more than 60 s ago" in await call_error(client, "get_job", {"job_id": job["id"]})


async def test_a_failing_job_reports_the_curated_error(
    slow_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, services = slow_client
    async with services.pool.use("tiny-sd15") as model:
        pass
    monkeypatch.setattr(model, "generate", lambda *a: (_ for _ in ()).throw(RuntimeError("secret /path")))
    message = await call_error(client, "generate_image", {"prompt": "x", "seed": 1})
    assert "internal error (id " in message and "secret" not in message
