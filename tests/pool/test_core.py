"""The pool on CPU with tiny models and injected budgets: placement, eviction, queues, cancellation, OOM."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest

from multimodal_mcp.backends.base import CancelToken, StepCallback
from multimodal_mcp.config import Config
from multimodal_mcp.errors import BackendError, Busy
from multimodal_mcp.pool import ModelPool
from multimodal_mcp.pool.devices import Device

from helpers import cpu_only, fake_gpu, make_config

MB = 1024 * 1024


def _config(tmp_path: Path, tiny_dir: Path, **pool: Any) -> Config:
    return make_config(tmp_path, tiny_dir, tmp_path, pool={"keep_alive_seconds": 0, **pool})


def _cpu(budget: int) -> Device:
    return Device("cpu", "cpu", "cpu", budget, budget)


async def _sizes(config: Config, *names: str) -> dict[str, int]:
    """Sizes on the (fake) GPU: float16 when the tests run with real CUDA moves, else float32."""
    pool = ModelPool(config, cpu_only())
    sizes = {}
    for name in names:
        size = await pool.estimate(name, fake_gpu())
        assert size is not None
        sizes[name] = size
    return sizes


def _where(pool: ModelPool) -> dict[str, str | None]:
    return {s.name: s.location for s in pool.states()}


async def test_estimates_from_safetensors_headers_match_the_loaded_sizes(config: Config) -> None:
    pool = ModelPool(config, cpu_only())
    async with pool.running():
        for name in ("tiny-sd15", "tiny-flux", "tiny-clip", "tiny-vlm", "tiny-controlnet-canny"):
            estimate = await pool.estimate(name)
            async with pool.use(name) as model:
                measured = model.memory_bytes()
            assert estimate is not None and abs(estimate - measured) <= 0.05 * measured, name
            state = next(s for s in pool.states() if s.name == name)
            assert state.memory_bytes == max(estimate, measured)


async def test_concurrent_first_requests_load_a_model_once(config: Config) -> None:
    pool = ModelPool(config, cpu_only())
    held: list[Any] = []

    async def take() -> None:
        async with pool.use("tiny-sd15") as model:
            held.append(model)

    async with pool.running(), anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(take)
    assert pool.load_counts == {"tiny-sd15": 1}
    assert len({id(m) for m in held}) == 1
    assert pool.misses >= 1 and pool.hits + pool.misses == 6


async def test_least_recently_used_idle_models_move_to_cpu_ram_and_come_back(
    tmp_path: Path, tiny_dir: Path
) -> None:
    config = _config(tmp_path, tiny_dir)
    sizes = await _sizes(config, "tiny-sd15", "tiny-flux", "tiny-sdxl")
    gpu = fake_gpu(budget_bytes=sizes["tiny-sd15"] + sizes["tiny-flux"] + MB // 2)
    pool = ModelPool(config, [gpu, _cpu(200 * MB)])
    async with pool.running():
        async with pool.use("tiny-sd15"):
            pass
        async with pool.use("tiny-flux"):
            pass
        assert _where(pool)["tiny-sd15"] == "fake-gpu:0" and _where(pool)["tiny-flux"] == "fake-gpu:0"

        async with pool.use("tiny-sdxl"):  # needs room: tiny-sd15 is the least recently used
            assert _where(pool) | {} == {**_where(pool), "tiny-sd15": "cpu", "tiny-sdxl": "fake-gpu:0"}
        assert pool.evictions["offloaded"] >= 1
        assert pool.used_bytes(gpu) <= gpu.budget_bytes

        async with pool.use("tiny-sd15") as model:  # back to its GPU, without reloading
            assert _where(pool)["tiny-sd15"] == "fake-gpu:0"
            images = await pool.run(model, _generate_one)
        assert len(images) == 1
    assert pool.load_counts["tiny-sd15"] == 1


async def test_idle_models_are_dropped_when_cpu_ram_cannot_take_them(tmp_path: Path, tiny_dir: Path) -> None:
    config = _config(tmp_path, tiny_dir)
    sizes = await _sizes(config, "tiny-sd15", "tiny-sdxl")
    gpu = fake_gpu(budget_bytes=max(sizes.values()) + MB // 4)
    pool = ModelPool(config, [gpu, _cpu(MB)])
    async with pool.running():
        async with pool.use("tiny-sd15"):
            pass
        async with pool.use("tiny-sdxl"):
            pass
    assert _where(pool)["tiny-sd15"] is None and _where(pool)["tiny-sdxl"] == "fake-gpu:0"
    assert pool.evictions["dropped"] == 1 and pool.evictions["offloaded"] == 0


async def test_a_model_in_use_is_never_evicted_and_the_waiting_load_gets_busy(
    tmp_path: Path, tiny_dir: Path
) -> None:
    config = _config(tmp_path, tiny_dir, placement_wait_seconds=0.2)
    sizes = await _sizes(config, "tiny-sd15", "tiny-sdxl")
    gpu = fake_gpu(budget_bytes=max(sizes.values()) + MB // 4)
    pool = ModelPool(config, [gpu, _cpu(MB)])
    async with pool.running():
        async with pool.use("tiny-sd15"):
            with pytest.raises(Busy, match="no device has room for tiny-sdxl"):
                async with pool.use("tiny-sdxl"):
                    pass
            assert _where(pool)["tiny-sd15"] == "fake-gpu:0"
        async with pool.use("tiny-sdxl"):  # released: now it can take the space
            assert _where(pool)["tiny-sd15"] is None


async def test_a_load_waiting_for_room_proceeds_when_the_holder_releases(
    tmp_path: Path, tiny_dir: Path
) -> None:
    config = _config(tmp_path, tiny_dir, placement_wait_seconds=30)
    sizes = await _sizes(config, "tiny-sd15", "tiny-sdxl")
    pool = ModelPool(config, [fake_gpu(budget_bytes=max(sizes.values()) + MB // 4), _cpu(MB)])
    release = anyio.Event()
    loaded = anyio.Event()

    async def holder() -> None:
        async with pool.use("tiny-sd15"):
            await release.wait()

    async def waiter() -> None:
        async with pool.use("tiny-sdxl"):
            loaded.set()

    async with pool.running(), anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not loaded.is_set()
        release.set()
        with anyio.fail_after(10):
            await loaded.wait()


async def test_a_model_that_can_never_fit_gets_an_error_naming_its_size_and_the_budgets(
    tmp_path: Path, tiny_dir: Path
) -> None:
    pool = ModelPool(_config(tmp_path, tiny_dir), [fake_gpu(budget_bytes=MB), _cpu(MB)])
    async with pool.running():
        with pytest.raises(
            BackendError, match=r"tiny-sd15' needs about \d\.\d MiB .* \(fake-gpu:0 1\.0 MiB, cpu 1\.0 MiB\)"
        ):
            async with pool.use("tiny-sd15"):
                pass


async def test_a_model_that_fits_no_gpu_falls_back_to_the_cpu_with_a_warning(
    tmp_path: Path, tiny_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = ModelPool(_config(tmp_path, tiny_dir), [fake_gpu(budget_bytes=MB), _cpu(200 * MB)])
    with caplog.at_level(logging.WARNING):
        async with pool.running(), pool.use("tiny-sd15"):
            assert _where(pool)["tiny-sd15"] == "cpu"
    assert "does not fit on any GPU" in caplog.text


async def test_a_controlnet_is_placed_on_its_base_models_device(tmp_path: Path, tiny_dir: Path) -> None:
    config = _config(tmp_path, tiny_dir)
    pool = ModelPool(
        config, [fake_gpu("fake-gpu:0", 100 * MB), fake_gpu("fake-gpu:1", 100 * MB), _cpu(100 * MB)]
    )
    async with pool.running():
        async with pool.use("tiny-clip"):  # fills gpu:0 a little, so the base goes to gpu:1 (more free)
            pass
        async with pool.use("tiny-sd15") as base, pool.use("tiny-controlnet-canny", near=base):
            where = _where(pool)
    assert where["tiny-sd15"] == where["tiny-controlnet-canny"] == "fake-gpu:1"


def _generate_one(model: Any, on_step: StepCallback, cancel: CancelToken) -> list[Any]:
    from multimodal_mcp.backends.base import GenerationRequest

    request = GenerationRequest("x", None, 64, 64, 2, 7.5, "dpm++", [1])
    return list(model.generate(request, on_step, cancel))


async def test_calls_queue_in_order_report_their_position_and_overflow_as_busy(
    tmp_path: Path, tiny_dir: Path
) -> None:
    pool = ModelPool(_config(tmp_path, tiny_dir, max_queue=1), cpu_only())
    started, gate = anyio.Event(), threading.Event()
    loop = anyio.lowlevel.current_token()  # model work runs on the device's own thread
    finished: list[str] = []
    messages: list[str | None] = []

    def blocking(_model: Any, _step: StepCallback, _cancel: CancelToken) -> str:
        anyio.from_thread.run_sync(started.set, token=loop)
        gate.wait(10)
        return "first"

    async def record(_done: float, _total: float | None, message: str | None) -> None:
        messages.append(message)

    async def first(model: Any) -> None:
        finished.append(await pool.run(model, blocking))

    async def second(model: Any) -> None:
        finished.append(await pool.run(model, lambda *_: "second", progress=record))

    async with pool.running(), pool.use("tiny-clip") as model, anyio.create_task_group() as tg:
        tg.start_soon(first, model)
        await started.wait()
        tg.start_soon(second, model)
        await anyio.wait_all_tasks_blocked()
        assert messages == ["queued on cpu: position 1"]
        assert next(s for s in pool.states() if s.name == "tiny-clip").queue_depth == 1
        with pytest.raises(Busy, match="1 calls are already waiting \\(limit 1\\)"):
            await pool.run(model, lambda *_: "third")
        gate.set()
    assert finished == ["first", "second"]


async def test_cancelling_a_call_stops_its_work_at_the_next_step_and_frees_the_lane(config: Config) -> None:
    pool = ModelPool(config, cpu_only())
    first_step = anyio.Event()
    steps_done: list[int] = []

    def long_work(_model: Any, on_step: StepCallback, cancel: CancelToken) -> None:
        for step in range(1, 10_001):
            cancel.raise_if_cancelled()
            steps_done.append(step)
            on_step(step, 10_000)
            threading.Event().wait(0.001)

    async def progress(done: float, _total: float | None, _message: str | None) -> None:
        if done >= 1:
            first_step.set()

    async with pool.running(), pool.use("tiny-clip") as model:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: pool.run(model, long_work, progress=progress))
                await first_step.wait()
                scope.cancel()
        assert len(steps_done) < 10_000
        with anyio.fail_after(5):
            assert await pool.run(model, lambda *_: "next") == "next"


async def test_a_queued_call_that_is_cancelled_leaves_the_queue(config: Config) -> None:
    pool = ModelPool(config, cpu_only())
    started, gate = anyio.Event(), threading.Event()
    loop = anyio.lowlevel.current_token()

    def blocking(_model: Any, _step: StepCallback, _cancel: CancelToken) -> None:
        anyio.from_thread.run_sync(started.set, token=loop)
        gate.wait(10)

    async with pool.running(), pool.use("tiny-clip") as model, anyio.create_task_group() as tg:
        tg.start_soon(lambda: pool.run(model, blocking))
        await started.wait()
        queued = anyio.CancelScope()

        async def queued_call() -> None:
            with queued:
                await pool.run(model, lambda *_: None)

        tg.start_soon(queued_call)
        await anyio.wait_all_tasks_blocked()
        assert pool.status()["devices"][0]["queue_depth"] == 1
        queued.cancel()
        await anyio.wait_all_tasks_blocked()
        assert pool.status()["devices"][0]["queue_depth"] == 0
        gate.set()


async def test_out_of_memory_frees_idle_models_and_retries_once(config: Config) -> None:
    import torch

    pool = ModelPool(config, cpu_only())
    attempts: list[int] = []

    def flaky(_model: Any, _step: StepCallback, _cancel: CancelToken) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "ok"

    async with pool.running():
        async with pool.use("tiny-vlm"):
            pass
        async with pool.use("tiny-clip") as model:
            assert await pool.run(model, flaky) == "ok"
        assert len(attempts) == 2 and pool.oom_retries == 1
        assert not pool.is_loaded("tiny-vlm")  # idle, so it was dropped to make room
        assert pool.is_loaded("tiny-clip")  # in use, so kept

        def always(_model: Any, _step: StepCallback, _cancel: CancelToken) -> None:
            raise torch.OutOfMemoryError("CUDA out of memory")

        async with pool.use("tiny-clip") as model:
            with pytest.raises(BackendError, match="ran out of memory running tiny-clip even after freeing"):
                await pool.run(model, always)
            assert await pool.run(model, lambda *_: "still serving") == "still serving"


async def test_idle_models_unload_after_the_keep_alive(config: Config) -> None:
    pool = ModelPool(config, cpu_only())
    now = [1000.0]
    pool._clock = lambda: now[0]
    async with pool.running():
        async with pool.use("tiny-clip"):
            pass
        async with pool.use("tiny-vlm"):
            now[0] += 50
            assert await pool.unload_idle(older_than=40) == ["tiny-clip"]  # tiny-vlm is in use
        now[0] += 10
        assert await pool.unload_idle(older_than=40) == []
        now[0] += 40
        assert await pool.unload_idle(older_than=40) == ["tiny-vlm"]


async def test_the_keep_alive_loop_and_preload_run_in_the_background(tmp_path: Path, tiny_dir: Path) -> None:
    config = make_config(
        tmp_path, tiny_dir, tmp_path, pool={"keep_alive_seconds": 0.2, "preload": ["tiny-clip"]}
    )
    pool = ModelPool(config, cpu_only())
    async with pool.running():
        with anyio.fail_after(30):
            await _until(lambda: pool.is_loaded("tiny-clip"))
            await _until(lambda: not pool.is_loaded("tiny-clip"))
    assert pool.load_counts == {"tiny-clip": 1} and pool.evictions["dropped"] == 1


async def _until(condition: Callable[[], bool]) -> None:
    """Poll a condition that no event signals (background loading and unloading), in small steps."""
    while not condition():  # noqa: ASYNC110
        await anyio.sleep(0.02)


@pytest.mark.gpu  # skipped without a CUDA device (tests/conftest.py)
async def test_a_real_cuda_out_of_memory_is_retried_once_then_reported(config: Config) -> None:
    import torch

    from multimodal_mcp.pool import discover_devices

    devices = discover_devices("cuda", gpu_headroom_bytes=1024**3, cpu_budget_bytes=8 * 1024**3)
    pool = ModelPool(config, devices)
    attempts: list[int] = []

    def allocate_too_much(_model: Any, _step: StepCallback, _cancel: CancelToken) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            torch.empty(4 * 1024**4, dtype=torch.uint8, device="cuda")  # 4 TiB: a genuine CUDA OOM
        return "recovered"

    async with pool.running(), pool.use("tiny-clip") as model:
        assert _where(pool)["tiny-clip"] == "cuda:0"
        assert await pool.run(model, allocate_too_much) == "recovered"
        assert pool.oom_retries == 1


async def test_a_devices_work_runs_on_one_long_lived_thread(config: Config) -> None:
    pool = ModelPool(config, cpu_only())

    def where(_model: Any, _step: StepCallback, _cancel: CancelToken) -> tuple[int, str]:
        return threading.get_ident(), threading.current_thread().name

    async with pool.running(), pool.use("tiny-clip") as model:
        first = await pool.run(model, where)
        await anyio.to_thread.run_sync(lambda: None)  # other blocking work in between uses other threads
        second = await pool.run(model, where)
    assert first == second and first[0] != threading.get_ident()
    assert first[1] == "multimodal-mcp cpu"
