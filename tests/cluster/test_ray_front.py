"""The MCP front as a Ray Serve ingress: ``serve --engine ray --front-replicas 2`` as users run it
(marker ``ray``; a subprocess with a local cluster of its own, since Serve's HTTP proxy must be on).

Two front replicas behind Serve's proxy on 127.0.0.2, CLIP on its own deployment; ``tiny-clip`` is
a paid model here, so its calls need the user's confirmation. Replicas are chosen by Serve per
request, so a confirmation's two rounds land on one replica or the other: with eight of them, a key
that was not shared would fail about all but 1 in 256 runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import ElicitResult

from helpers import data_uri, photo
from http_helpers import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300), pytest.mark.anyio]

CONFIG = """profile = "tiny"
[server]
store_dir = "{store}"
tiny_dir = "{tiny}"
[server.pool]
job_wait_seconds = 0.5
[server.spending]
confirm = "ask"
default_without_elicitation = "deny"
[models.tiny-clip]
task = "clip"
backend = "transformers"
source = "tiny:clip"
paid = true
"""


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[str]:
    pytest.importorskip("ray.serve")
    root = tmp_path_factory.mktemp("front")
    config = root / "config.toml"
    config.write_text(CONFIG.format(store=root / "store", tiny=tiny_dir))
    port = free_port()
    log = root / "serve.log"
    command = [sys.executable, "-m", "multimodal_mcp", "serve", "--transport", "http"]
    command += ["--host", "127.0.0.2", "--port", str(port), "--config", str(config)]
    command += ["--engine", "ray", "--ray-models", "tiny-clip", "--front-replicas", "2"]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 200
        while "MCP front up: 2 replica(s)" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the front did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"http://127.0.0.2:{port}/mcp"
    finally:
        process.terminate()  # SIGTERM, as systemd or Kubernetes stop it
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode == 0, f"SIGTERM did not stop the front cleanly:\n{log.read_text()[-3000:]}"
    assert "multimodal_mcp: stopped" in log.read_text(), "the front was removed and the log says so"


class User:
    def __init__(self) -> None:
        self.questions: list[str] = []

    async def __call__(self, context: Any, params: Any) -> ElicitResult:
        self.questions.append(params.message)
        return ElicitResult(action="accept", content={"approve": True})


async def finished(client: Client, result: Any) -> Any:
    """The tool's result: a job handle (a call past ``job_wait_seconds``) is followed with get_job,
    each poll reaching whichever replica Serve picks."""
    job = (result.structured_content or {}).get("job")
    if result.is_error or job is None or "result" in (result.structured_content or {}):
        return result
    with anyio.fail_after(120):
        while True:
            polled = await client.call_tool("get_job", {"job_id": job["id"], "wait_seconds": 2})
            state = (polled.structured_content or {}).get("job", {}).get("status")
            if polled.is_error or state != "running":
                return polled


def classify(model: str = "tiny-clip", image: str | None = None) -> dict[str, Any]:
    return {"image": image or data_uri(photo(size=48)), "labels": ["a cat", "a cup"], "model": model}


async def test_a_current_client_confirms_paid_calls_through_any_front_replica(front: str) -> None:
    user = User()
    async with Client(front, elicitation_callback=user) as client:  # type: ignore[arg-type]
        assert client.protocol_version == "2026-07-28"
        results = [
            await finished(client, await client.call_tool("clip_classify", classify())) for _ in range(8)
        ]
    assert [r.is_error for r in results] == [False] * 8, [r.content for r in results if r.is_error]
    assert len(user.questions) == 8
    for result in results:
        content = result.structured_content or {}
        labels = (content.get("result") or content)["labels"]  # a job's result, or the call's
        assert {s["label"] for s in labels} == {"a cat", "a cup"}


async def test_an_older_client_connects_and_gets_the_default_for_clients_that_cannot_ask(front: str) -> None:
    user = User()
    async with Client(front, mode="legacy", elicitation_callback=user) as client:  # type: ignore[arg-type]
        assert client.protocol_version == "2025-11-25"
        free = await finished(client, await client.call_tool("clip_classify", classify("tiny-siglip")))
        content = free.structured_content or {}
        uri = (content.get("result") or content)["image"]["uri"]
        again = [
            await finished(client, await client.call_tool("clip_classify", classify("tiny-siglip", uri)))
            for _ in range(4)
        ]
        paid = await client.call_tool("clip_classify", classify())
    assert not free.is_error and not any(r.is_error for r in again), "an image id works at every replica"
    assert paid.is_error and "before 2026-07-28" in paid.content[0].text  # type: ignore[union-attr]
    assert user.questions == []


async def test_a_job_started_at_one_replica_is_followed_from_any(front: str) -> None:
    """Each get_job may reach either replica: the jobs live on the cluster's job board."""
    async with Client(front) as client:
        started = await client.call_tool(
            "generate_image", {"prompt": "a red cube", "width": 128, "height": 128, "steps": 30, "seed": 1}
        )
        assert not started.is_error, started.content
        job = (started.structured_content or {}).get("job")
        assert job is not None, f"the call answered before it became a job: {started.structured_content}"
        seen = []
        with anyio.fail_after(120):
            while True:
                polled = await client.call_tool("get_job", {"job_id": job["id"], "wait_seconds": 2})
                assert not polled.is_error, polled.content
                seen.append(polled.structured_content["job"]["status"])  # type: ignore[index]
                if seen[-1] != "running":
                    break
    assert seen[-1] == "done", seen
    assert polled.structured_content["result"]["images"], polled.structured_content  # type: ignore[index]
