"""Load and faults: the server keeps serving and the store stays consistent.

Over capacity, a failing model, an out-of-memory error, a client that disconnects mid-generation
and a SIGKILLed server restarted on the same store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from multimodal_mcp.config import Config
from multimodal_mcp.imaging.store_index import INDEX_NAME, StoreIndex
from multimodal_mcp.server.app import create_services
from multimodal_mcp.tools.common import Services

from helpers import call_error, call_ok, cpu_only, make_config, open_png, read_png, text_of
from http_helpers import free_port, http_client, serving


def assert_store_consistent(store_dir: Path) -> int:
    """No temporary file, and every record has its image file and every image file its record;
    returns the count."""
    files = [p for p in store_dir.rglob("*") if p.is_file()]
    assert not [p.name for p in files if p.name.endswith(".tmp")]
    images = [p.stem for p in files if p.suffix in (".png", ".jpg", ".webp")]
    records = {p.stem for p in files if p.suffix == ".json"}
    assert sorted(images) == sorted(records)
    return len(records)


@pytest.fixture
def small_queue(tmp_path: Path, tiny_dir: Path) -> Config:
    return make_config(tmp_path, tiny_dir, tmp_path, pool={"max_queue": 1})


async def _tiny_model(services: Services) -> Any:
    async with services.pool.use("tiny-sd15") as model:
        return model


async def test_clients_beyond_capacity_get_busy_at_once_and_every_reported_image_reads_back(
    small_queue: Config,
) -> None:
    services = create_services(small_queue, cpu_only())
    outcomes: list[tuple[str, float, Any]] = []
    async with serving(small_queue, services) as url:

        async def one_client(i: int) -> None:
            async with http_client(url) as client:
                started = time.monotonic()
                with anyio.fail_after(120):
                    result = await client.call_tool(
                        "generate_image", {"prompt": f"p{i}", "steps": 8, "seed": i}
                    )
                elapsed = time.monotonic() - started
                if result.is_error:
                    outcomes.append(("error", elapsed, text_of(result)))
                else:
                    uris = [image["uri"] for image in result.structured_content["images"]]
                    pngs = [await read_png(client, uri) for uri in uris]
                    outcomes.append(("made", elapsed, (uris, pngs)))

        async with http_client(url) as warm:  # the model loads once, before the rush
            await call_ok(warm, "generate_image", {"prompt": "warm", "steps": 1, "seed": 0})
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one_client, i)

        errors = [o for o in outcomes if o[0] == "error"]
        made = [o for o in outcomes if o[0] == "made"]
        assert len(outcomes) == 6 and errors and made
        for _, elapsed, message in errors:
            assert "is busy" in message and "Try again" in message, message
            assert elapsed < 10  # refused at once, not after waiting for the device
        for _, _, (_uris, pngs) in made:
            assert all(open_png(png).size == (64, 64) for png in pngs)
        async with http_client(url) as fresh:
            with anyio.fail_after(30):
                await call_ok(fresh, "generate_image", {"prompt": "right after", "steps": 1, "seed": 9})
    assert assert_store_consistent(small_queue.server.store_dir) == len(made) + 2


async def test_a_failing_model_reports_an_id_not_its_paths_or_keys_and_the_server_keeps_serving(
    config: Config, services: Services, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "/home/alice/.cache/hf/token sk-live-0123456789abcdef"
    payload = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    async with serving(config, services) as url, http_client(url) as client:
        model = await _tiny_model(services)

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError(f"cannot open {secret} while decoding {payload}")

        monkeypatch.setattr(model, "generate", broken)
        with caplog.at_level(logging.ERROR):
            message = await call_error(client, "generate_image", {"prompt": "x", "seed": 1})
        assert "internal error (id " in message
        for leak in ("/home/alice", "sk-live", payload, "Traceback", "RuntimeError"):
            assert leak not in message
        error_id = message.split("(id ")[1].split(")")[0]
        assert (
            error_id in caplog.text and "sk-live-0123456789abcdef" in caplog.text
        )  # the log has the details

        import torch

        def out_of_memory(*args: object, **kwargs: object) -> None:
            raise torch.OutOfMemoryError("CUDA out of memory at /opt/secret/allocator.cpp:123")

        monkeypatch.setattr(model, "generate", out_of_memory)
        message = await call_error(client, "generate_image", {"prompt": "x", "seed": 1})
        assert "ran out of memory" in message and "/opt/secret" not in message
        monkeypatch.undo()
        await call_ok(client, "generate_image", {"prompt": "after the faults", "seed": 1})
    assert_store_consistent(config.server.store_dir)


async def test_a_client_that_disconnects_mid_generation_leaves_the_server_serving(
    config: Config, services: Services
) -> None:
    async with serving(config, services) as url:
        started = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if progress >= 1:
                started.set()

        with anyio.CancelScope() as scope:
            async with http_client(url) as leaving, anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: leaving.call_tool(
                        "generate_image",
                        {"prompt": "x", "steps": 100, "seed": 1},
                        progress_callback=on_progress,
                    )
                )
                with anyio.fail_after(60):
                    await started.wait()
                scope.cancel()  # drops the connection mid-generation
        with anyio.fail_after(60):
            async with http_client(url) as client:
                made = await call_ok(client, "generate_image", {"prompt": "next", "steps": 1, "seed": 2})
                assert open_png(await read_png(client, made["images"][0]["uri"])).size == (64, 64)
        with anyio.fail_after(60):  # the abandoned generation stopped (or finished): the lane is free
            while services.pool.status()["devices"][0]["running"]:  # noqa: ASYNC110 (status is a snapshot)
                await anyio.sleep(0.1)
    assert_store_consistent(config.server.store_dir)


def _wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"the server did not open port {port}")


async def test_a_server_killed_with_sigkill_restarts_on_the_same_store_with_every_reported_image(
    tmp_path: Path, tiny_dir: Path
) -> None:
    store = tmp_path / "store"
    config = tmp_path / "config.toml"
    config.write_text(f'profile = "tiny"\n[server]\nstore_dir = "{store}"\ntiny_dir = "{tiny_dir}"\n')

    async def start() -> tuple[anyio.abc.Process, str]:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "multimodal_mcp",
            "serve",
            "--transport",
            "http",
            "--port",
            str(port),
        ]
        process = await anyio.open_process([*command, "--config", str(config)], stdout=None, stderr=None)
        await anyio.to_thread.run_sync(_wait_for_port, port, time.monotonic() + 90)
        return process, f"http://127.0.0.1:{port}/mcp"

    process, url = await start()
    try:
        async with http_client(url) as client:
            reported = []
            for seed in range(3):
                made = await call_ok(client, "generate_image", {"prompt": "kept", "steps": 1, "seed": seed})
                reported.append(made["images"][0]["uri"])
            pngs = {uri: await read_png(client, uri) for uri in reported}
        started = anyio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if progress >= 1:
                started.set()

        async def doomed() -> None:
            # The server dies under this call: the client sees a broken stream, and so does its exit.
            with contextlib.suppress(Exception):
                async with http_client(url) as client:
                    await client.call_tool(
                        "generate_image",
                        {"prompt": "doomed", "steps": 100, "seed": 7},
                        progress_callback=on_progress,
                    )

        async with anyio.create_task_group() as tg:
            tg.start_soon(doomed)
            with anyio.fail_after(60):
                await started.wait()
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == -signal.SIGKILL

    # What a kill in the middle of a write leaves: the write's pending row in the store's index (made
    # before its first file), a temporary file, a PNG whose record never came.
    folder = store / reported[0][8:10]
    index = StoreIndex(store / INDEX_NAME)
    with index.transaction() as db:
        for image_id in (reported[0][8:], "0123456789abcdef"):
            db.execute("INSERT INTO pending VALUES (?, 'png', ?, ?)", (image_id, process.pid, time.time()))
    index.close()
    (folder / f".{reported[0][8:]}.png.abc123.tmp").write_bytes(b"\x89PNG half")
    (store / "01").mkdir(exist_ok=True)  # where a write of that id puts its image
    (store / "01" / "0123456789abcdef.png").write_bytes(pngs[reported[0]])

    # Restarted on the same store (in this process: the startup path is the same, and it is faster).
    restarted = make_config(tmp_path, tiny_dir, tmp_path)
    assert restarted.server.store_dir == store
    async with serving(restarted, create_services(restarted, cpu_only())) as url, http_client(url) as client:
        for uri, png in pngs.items():
            assert await read_png(client, uri) == png
        await call_ok(client, "generate_image", {"prompt": "after the restart", "steps": 1, "seed": 11})
    assert assert_store_consistent(store) == 4
    assert not (store / "01" / "0123456789abcdef.png").exists()
