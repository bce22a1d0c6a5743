"""The Ray Serve engine on a single-node local cluster on loopback (marker ``ray``).

One small cluster for the whole session (``engine`` in conftest.py: 2 CPUs, a 150 MB object store,
no dashboard, Serve's HTTP proxy off), two deployments: ``tiny-sd15`` (with its components) and
``clip`` (tiny-clip). Every test has a timeout: a hang is a failure, not a stuck CI job.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from PIL import Image

from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.config import Config
from multimodal_mcp.errors import BackendError, Busy, InvalidArgument
from multimodal_mcp.handles import ImageRequest
from multimodal_mcp.hub import ModelHub
from multimodal_mcp.pool.core import ModelPool
from multimodal_mcp.server.app import build_server, create_services

from helpers import cpu_only
from http_helpers import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def _hub(config: Config, engine: Any) -> ModelHub:
    return ModelHub(config, ModelPool(config, cpu_only()), HostedConnections(config.hosted), engine)


def _request(steps: int, seed: int = 7) -> ImageRequest:
    return ImageRequest(
        prompt="a red cube", width=64, height=64, steps=steps, scheduler="euler", seeds=(seed,)
    )


async def _recent(engine: Any, family: str) -> list[tuple[Any, ...]]:
    from ray import serve

    handle = serve.get_deployment_handle(family, app_name=f"{engine.settings.app_name}-{family}")
    return list(await handle.recent.remote())


async def test_clip_and_generation_through_serve_match_the_in_process_pool(
    ray_config: Config, engine: Any
) -> None:
    remote, here = _hub(ray_config, engine), _hub(ray_config, None)
    image = Image.new("RGB", (48, 48), "red")
    labels = ["a red square", "a blue circle"]
    async with here.pool.running():
        assert await remote.embedder("tiny-clip").classify(image, labels) == pytest.approx(
            await here.embedder("tiny-clip").classify(image, labels), abs=1e-5
        )
        steps: list[float] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            if total is not None:
                steps.append(done)

        far = await remote.image_generator("tiny-sd15").generate(_request(3), progress=progress)
        near = await here.image_generator("tiny-sd15").generate(_request(3))
    assert far.images[0].tobytes() == near.images[0].tobytes()
    assert steps[-1] == 3, "the replica's denoising steps reached the front"


async def test_the_tools_run_through_serve_over_mcp(ray_config: Config, engine: Any) -> None:
    services = create_services(ray_config, devices=cpu_only(), engine=engine)
    async with Client(build_server(ray_config, services)) as client:
        made = await client.call_tool("generate_image", {"prompt": "a red cube", "seed": 3})
        assert not made.is_error, made.content
        image_id = made.structured_content["images"][0]["id"]
        classified = await client.call_tool(
            "clip_classify", {"image": f"image://{image_id}", "labels": ["a cube", "a dog"]}
        )
        assert not classified.is_error, classified.content
        assert sum(s["score"] for s in classified.structured_content["labels"]) == pytest.approx(1)
    assert services.pool.load_counts == {}, "no model ran in the front's own pool"


async def test_a_cancelled_generation_stops_and_the_next_starts_on_its_lane_only_after(
    ray_config: Config, engine: Any
) -> None:
    generator = _hub(ray_config, engine).image_generator("tiny-sd15")
    stepped = anyio.Event()

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if total == 400:
            stepped.set()

    async with anyio.create_task_group() as tg:
        first = anyio.CancelScope()

        async def run_first() -> None:
            with first:
                await generator.generate(_request(400), progress=progress)

        tg.start_soon(run_first)
        with anyio.fail_after(60):
            await stepped.wait()
        first.cancel()  # the front cancels the deployment response
        await generator.generate(_request(2, seed=8))
    events = await _recent(engine, "tiny-sd15")
    cancelled = [e for e in events if e[0] == "end" and e[2] == "cancelled"][-1]
    call = cancelled[1]
    later = min(e[1] for e in events if e[0] == "start" and e[1] > call)
    steps = [e for e in events if e[0] == "step" and e[1] == call]
    next_steps = [e for e in events if e[0] == "step" and e[1] == later]
    assert steps[-1][2] < 400, "the replica stopped the work before its last step"
    assert cancelled[-1] <= next_steps[0][-1], "the next call started only once the cancelled one stopped"


async def test_errors_reach_the_caller_curated_or_by_id_with_no_ray_internals(
    ray_config: Config, engine: Any
) -> None:
    generator = _hub(ray_config, engine).image_generator("tiny-sd15")
    with pytest.raises(InvalidArgument, match="scheduler 'nope'"):
        await generator.generate(replace(_request(2), scheduler="nope"))
    with pytest.raises(BackendError) as raised:
        await generator.generate(ImageRequest(prompt="x", steps=2))  # no size: fails inside the replica
    message = str(raised.value)
    assert re.search(r"error id [0-9a-f]{8}", message)
    for internal in ("Traceback", "ray", "Ray", "pid", "File ", "assert"):
        assert internal not in message
    assert not re.search(r"\d+\.\d+\.\d+\.\d+", message), "no address"


async def test_a_call_past_its_timeout_is_cancelled_in_the_replica_and_says_so(
    ray_config: Config, engine: Any
) -> None:
    from multimodal_mcp.cluster.engine import ServeCaller
    from multimodal_mcp.cluster.remote import RemoteImageGenerator

    impatient = ServeCaller(replace(engine.settings, call_timeout=1.5), engine.where)
    generator = RemoteImageGenerator(
        impatient, "tiny-sd15", _hub(ray_config, engine).capabilities("tiny-sd15")
    )
    with pytest.raises(BackendError, match=r"did not finish within 1.5 s"):
        await generator.generate(_request(400, seed=9))
    with anyio.fail_after(30):
        while True:  # the replica saw the cancel and stopped the work
            events = await _recent(engine, "tiny-sd15")
            if events[-1][0] == "end":
                break
            await anyio.sleep(0.2)
    assert events[-1][2] == "cancelled"


async def test_a_replica_silent_past_the_silence_timeout_fails_the_call_and_is_cancelled(
    ray_config: Config, engine: Any
) -> None:
    """The replica sends a heartbeat every 0.5 s here; a caller that waits only 0.2 s for a word
    takes the silence for a lost node: the call fails saying so, and the replica stops the work."""
    from multimodal_mcp.cluster.engine import ServeCaller
    from multimodal_mcp.cluster.remote import RemoteImageGenerator

    hub = _hub(ray_config, engine)
    await hub.image_generator("tiny-sd15").generate(_request(2))  # the replica and the model are up
    before = max(e[1] for e in await _recent(engine, "tiny-sd15"))
    hasty = ServeCaller(replace(engine.settings, silence_timeout=0.2), engine.where)
    generator = RemoteImageGenerator(hasty, "tiny-sd15", hub.capabilities("tiny-sd15"))
    with pytest.raises(BackendError, match=r"stopped answering \(0.2 s without a word"):
        await generator.generate(_request(400, seed=11))  # no progress asked: only heartbeats come
    with anyio.fail_after(30):
        while True:
            ends = [e for e in await _recent(engine, "tiny-sd15") if e[0] == "end" and e[1] > before]
            if ends:
                break
            await anyio.sleep(0.2)
    assert ends[0][2] == "cancelled"


async def test_serve_backpressure_is_the_busy_error(ray_config: Config, engine: Any) -> None:
    generator = _hub(ray_config, engine).image_generator("tiny-sd15")
    outcomes: list[BaseException | None] = []

    async def one(seed: int) -> None:
        try:
            await generator.generate(_request(60, seed=seed))
            outcomes.append(None)
        except (Busy, BackendError) as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for seed in range(6):  # 2 ongoing + 1 queued; the rest are refused at once
            tg.start_soon(one, seed)
    busy = [o for o in outcomes if isinstance(o, Busy)]
    assert busy and all(o is None or isinstance(o, Busy) for o in outcomes)
    assert "Try again" in str(busy[0]) and "ray" not in str(busy[0]).lower()


async def test_the_job_board_actor_is_shared_by_every_front_of_the_cluster(engine: Any) -> None:
    from multimodal_mcp.job_board import RayJobBoard

    one, other = RayJobBoard.connect(name="test-jobs"), RayJobBoard.connect(name="test-jobs")
    await one.put({"id": "0123456789abcdef", "status": "running", "owner": "user:alice"})
    await other.request_cancel("0123456789abcdef")
    assert (await other.get("0123456789abcdef") or {}).get("status") == "running"
    assert await one.cancel_requested("0123456789abcdef")
    assert await one.get("fedcba9876543210") is None


async def test_the_cli_serves_the_tools_over_http_with_the_model_work_on_the_cluster(
    tmp_path: Path, tiny_dir: Path, engine: Any
) -> None:
    """`multimodal-mcp serve --engine ray` as users run it, joining this session's cluster and the
    families its engine deployed (--ray-deployed), over streamable HTTP on loopback."""
    import ray

    config = tmp_path / "config.toml"
    config.write_text(
        f'profile = "tiny"\n[server]\nstore_dir = "{tmp_path / "store"}"\ntiny_dir = "{tiny_dir}"\n'
    )
    port = free_port()
    command = [sys.executable, "-m", "multimodal_mcp", "serve", "--transport", "http", "--port", str(port)]
    command += [
        "--config",
        str(config),
        "--engine",
        "ray",
        "--ray-address",
        ray.get_runtime_context().gcs_address,
    ]
    command += ["--ray-deployed", "--ray-models", "tiny-sd15,tiny-clip"]
    process = await anyio.open_process(command, stdout=None, stderr=None)
    try:
        with anyio.fail_after(90):
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    await anyio.sleep(0.3)
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            made = await client.call_tool("generate_image", {"prompt": "a red cube", "seed": 5})
            assert not made.is_error, made.content
            uri = made.structured_content["images"][0]["uri"]
            classified = await client.call_tool(
                "clip_classify", {"image": uri, "labels": ["a cube", "a dog"]}
            )
            assert not classified.is_error, classified.content
            status = json.loads((await client.read_resource("pool://status")).contents[0].text)
        assert not any(m["loaded"] for m in status["models"]), "the front loaded no model itself"
    finally:
        process.terminate()
        with anyio.fail_after(30):
            await process.wait()


def test_a_deployment_no_node_can_take_fails_the_start_naming_it(ray_config: Config, engine: Any) -> None:
    from ray import serve

    from multimodal_mcp.cluster.engine import RayEngine, app_name
    from multimodal_mcp.cluster.settings import FamilySettings, RaySettings
    from multimodal_mcp.config import ConfigError

    settings = RaySettings(
        app_name="mmcp-unschedulable",
        only=frozenset({"tiny-text"}),
        families={"text": FamilySettings(node_labels={"zone": "nowhere"})},
        deploy_timeout=6,
    )
    unplaceable = RayEngine(ray_config, settings)
    try:
        started = time.monotonic()
        with pytest.raises(ConfigError, match=r"did not start 'text' within 6 s"):
            unplaceable.start()
        assert time.monotonic() - started < 60
    finally:
        serve.delete(app_name(settings, "text"))


async def test_a_replica_lost_mid_call_gives_a_clear_error_not_a_hang(
    ray_config: Config, engine: Any
) -> None:
    """Runs last: the lost replica is replaced by Serve, which the other tests need not wait for."""
    import ray

    generator = _hub(ray_config, engine).image_generator("tiny-sd15")
    stepped = anyio.Event()

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if total == 400:
            stepped.set()

    async def kill_the_replica() -> None:
        with anyio.fail_after(60):
            await stepped.wait()
        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::") and "#tiny-sd15#" in a["name"]
        ]
        for name in names:
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_the_replica)
        with pytest.raises(BackendError) as raised, anyio.fail_after(60):
            await generator.generate(_request(400, seed=10), progress=progress)
    message = str(raised.value)
    assert "tiny-sd15" in message and ("lost" in message or "stopped answering" in message)
    assert "SERVE_REPLICA" not in message and "Traceback" not in message
