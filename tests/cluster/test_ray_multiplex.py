"""Serve's model multiplexing and the replicas' status, on the session's cluster (marker ``ray``).

A deployment ``mux`` of its own (application ``mmcp-mux-mux``): two replicas (no CPU reserved: the
session's cluster has 2) serving three small models, tiny-clip, tiny-siglip and tiny-text, with
Serve's multiplexed cache holding one model per replica, and a status record every 0.5 s; and the
``depth`` deployment (tiny-depth), which makes depth maps from photos for the front.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client
from PIL import Image

from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.config import Config
from multimodal_mcp.hub import ModelHub
from multimodal_mcp.pool.core import ModelPool
from multimodal_mcp.server.app import build_server, create_services

from helpers import cpu_only

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

_MODELS = ("tiny-clip", "tiny-siglip", "tiny-text")


@pytest.fixture(scope="module")
def mux(ray_config: Config, engine: Any) -> Iterator[Any]:
    """A second engine on the session's cluster (``engine`` started it), deploying ``mux`` only."""
    from ray import serve

    from multimodal_mcp.cluster.engine import RayEngine, app_name
    from multimodal_mcp.cluster.settings import FamilySettings, RaySettings

    settings = RaySettings(
        app_name="mmcp-mux",
        only=frozenset({*_MODELS, "tiny-depth"}),
        assign=dict.fromkeys(_MODELS, "mux"),
        families={"mux": FamilySettings(num_replicas=2, max_models_per_replica=1)},
        call_timeout=120,
        silence_timeout=30,
        heartbeat=0.5,
        deploy_timeout=150,
        status_interval=0.5,
        status_timeout=5,
        status_stale_after=3,
    )
    made = RayEngine(ray_config, settings)
    made.start()
    assert made.plan == {"mux": list(_MODELS), "depth": ["tiny-depth"]}
    yield made
    for family in made.plan:
        serve.delete(app_name(settings, family))


def _hub(config: Config, engine: Any) -> ModelHub:
    return ModelHub(config, ModelPool(config, cpu_only()), HostedConnections(config.hosted), engine)


async def _use(hub: ModelHub, model: str) -> None:
    if model == "tiny-text":
        await hub.text_chat(model).complete("Answer briefly.", "Say hi.", max_tokens=2)
    else:
        await hub.embedder(model).classify(Image.new("RGB", (32, 32), "red"), ["a red square", "a dog"])


async def _replicas(mux: Any, since: float, until: Any = None) -> dict[str, dict[str, Any]]:
    """The reachable replicas' status published after ``since`` (this process's monotonic clock),
    by replica id, once ``until(them)`` holds."""
    with anyio.fail_after(60):
        while True:
            asked = time.monotonic()
            found = await mux.replica_status()
            replicas = {
                r["replica"]: r
                for r in found.get("replicas", [])
                if r["deployment"] == "mux"
                and r["reachable"]
                and r["last_heard_seconds"] + 0.05 < asked - since
            }
            if until is None or until(replicas):
                return replicas
            await anyio.sleep(0.2)


async def test_calls_for_each_checkpoint_keep_going_to_the_replica_that_loaded_it(
    ray_config: Config, mux: Any
) -> None:
    hub = _hub(ray_config, mux)
    await _use(hub, "tiny-clip")
    await _use(hub, "tiny-siglip")
    for _ in range(4):
        await _use(hub, "tiny-clip")
        await _use(hub, "tiny-siglip")
    done = time.monotonic()
    answered = list(mux.caller.answered_by)[-10:]
    clip = {replica for model, replica in answered if model == "tiny-clip"}
    siglip = {replica for model, replica in answered if model == "tiny-siglip"}
    assert len(clip) == 1 and len(siglip) == 1, answered
    assert clip != siglip, "with one model per replica, each checkpoint has a replica of its own"
    (clip_replica,), (siglip_replica,) = clip, siglip
    replicas = await _replicas(mux, done, lambda found: {clip_replica, siglip_replica} <= set(found))
    for replica, model in ((clip_replica, "tiny-clip"), (siglip_replica, "tiny-siglip")):
        status = replicas[replica]
        assert status["deployment"] == "mux"
        assert status["loaded"] == [model] and status["multiplexed"] == [model]
        loads = {m["name"]: m["loads"] for m in status["models"]}
        assert loads[model] == 1, "loaded once, then every call found it there"


async def test_a_checkpoint_serve_evicts_is_released_from_that_replicas_pool(
    ray_config: Config, mux: Any
) -> None:
    hub = _hub(ray_config, mux)
    await _use(hub, "tiny-clip")
    await _use(hub, "tiny-siglip")
    before = await _replicas(mux, time.monotonic(), lambda found: len(found) == 2)
    await _use(hub, "tiny-text")  # a third model: the replica it lands on lets its model go
    model, replica = mux.caller.answered_by[-1]
    assert model == "tiny-text"
    held = before[replica]["loaded"]
    assert len(held) == 1 and held[0] != "tiny-text"
    after = await _replicas(mux, time.monotonic(), lambda found: len(found) == 2)
    status = after[replica]
    assert status["multiplexed"] == ["tiny-text"], "Serve's cache evicted the other model"
    assert status["loaded"] == ["tiny-text"], "and the replica's pool released it"
    assert status["counters"]["evictions_dropped"] > before[replica]["counters"]["evictions_dropped"]
    dropped = next(m for m in status["models"] if m["name"] == held[0])
    assert not dropped["loaded"] and dropped["memory_bytes"] is None
    cpu = status["devices"][-1]
    assert cpu["used_bytes"] == next(m for m in status["models"] if m["name"] == "tiny-text")["memory_bytes"]
    (other,) = set(after) - {replica}
    assert after[other]["loaded"] == before[other]["loaded"], "the other replica kept its model"


async def test_pool_status_shows_each_replicas_pool_over_mcp(ray_config: Config, mux: Any) -> None:
    await _use(_hub(ray_config, mux), "tiny-clip")
    await _replicas(mux, time.monotonic(), lambda found: len(found) == 2)
    services = create_services(ray_config, devices=cpu_only(), engine=mux)
    async with Client(build_server(ray_config, services)) as client:
        status = json.loads((await client.read_resource("pool://status")).contents[0].text)
    assert "devices" in status and "models" in status, "the front's own pool, as before"
    cluster = status["cluster"]
    assert cluster["reachable"] is True
    replicas = [r for r in cluster["replicas"] if r["deployment"] == "mux"]
    assert len(replicas) == 2 and len({r["replica"] for r in replicas}) == 2
    for replica in replicas:
        assert replica["reachable"] and replica["node"] and replica["last_heard_seconds"] < 3
        device = replica["devices"][-1]
        assert {"budget_bytes", "used_bytes", "queue_depth", "running"} <= set(device)
        assert {m["name"] for m in replica["models"]} == set(_MODELS)
    loaded = [r for r in replicas if "tiny-clip" in r["loaded"]]
    assert len(loaded) == 1 and loaded[0]["devices"][-1]["used_bytes"] > 0


async def test_a_status_board_that_does_not_answer_is_reported_within_the_timeout(engine: Any) -> None:
    import ray

    from multimodal_mcp.cluster.status import gather

    @ray.remote(num_cpus=0)
    class Stuck:
        async def records(self) -> list[Any]:
            await anyio.sleep(60)
            return []

    board = Stuck.remote()  # type: ignore[attr-defined]
    try:
        with anyio.fail_after(10):
            found = await gather(board, wait_seconds=0.5, stale_after=3)
        assert found == {
            "reachable": False,
            "error": "the replicas' status did not answer within 0.5 s; try again",
        }
    finally:
        ray.kill(board)


async def test_depth_maps_from_photos_are_made_by_the_depth_deployment(ray_config: Config, mux: Any) -> None:
    photo = Image.radial_gradient("L").convert("RGB").resize((64, 64))
    remote, here = _hub(ray_config, mux), _hub(ray_config, None)
    far = remote.preprocessor("depth")
    assert far is not None and type(far).__name__ == "RemoteDepthEstimator"
    async with here.pool.running():
        near = here.preprocessor("depth")
        assert near is not None
        expected = await near(photo, {})
        made = await far(photo, {})
    assert made.size == expected.size and made.tobytes() == expected.tobytes()
    assert remote.pool.load_counts == {}, "the front's pool loaded no depth model"
    assert mux.caller.answered_by[-1][0] == "tiny-depth"


async def test_a_lost_status_board_is_reported_then_made_again_by_the_front_and_the_replicas(
    mux: Any,
) -> None:
    import ray

    from multimodal_mcp.cluster.status import NAMESPACE, board_name

    await _replicas(mux, time.monotonic(), lambda found: len(found) == 2)
    ray.kill(ray.get_actor(board_name("mmcp-mux"), namespace=NAMESPACE), no_restart=True)
    with anyio.fail_after(mux.settings.status_timeout + 5):
        lost = await mux.replica_status()
    assert lost == {"reachable": False, "error": lost["error"]} and "did not answer" in lost["error"]
    after = await _replicas(mux, time.monotonic(), lambda found: len(found) == 2)
    assert {r["deployment"] for r in after.values()} == {"mux"}


async def test_a_lost_replica_shows_unreachable_and_status_never_waits_for_it(mux: Any) -> None:
    """Runs last in this file: Serve replaces the killed replica, which no later test waits for."""
    import ray

    replicas = await _replicas(mux, time.monotonic(), lambda found: len(found) == 2)
    victim = sorted(replicas)[0]
    (name,) = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::mmcp-mux-mux#mux#") and a["name"].endswith(victim)
    ]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    with anyio.fail_after(60):
        while True:
            with anyio.fail_after(mux.settings.status_timeout + 1):
                found = await mux.replica_status()  # answers even with a replica gone
            lost = [r for r in found["replicas"] if r["replica"] == victim]
            if lost and not lost[0]["reachable"]:
                break
            await anyio.sleep(0.3)
    assert lost[0]["last_heard_seconds"] > mux.settings.status_stale_after
    assert any(r["reachable"] for r in found["replicas"] if r["replica"] != victim)
