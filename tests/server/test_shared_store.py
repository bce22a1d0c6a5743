"""Issue 13, item 4 end to end: two real server processes write into one store at once while one
of them restarts again and again (each start runs the store's cleanup); no image either reported
is lost."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import anyio
from anyio.abc import Process

from helpers import call_ok
from http_helpers import free_port, http_client

RESTARTS = 2


async def _start(config: Path, port: int) -> Process:
    command = [sys.executable, "-m", "multimodal_mcp", "serve", "--transport", "http", "--port", str(port)]
    process = await anyio.open_process([*command, "--config", str(config)], stdout=None, stderr=None)
    with anyio.fail_after(120):
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return process
            except OSError:
                await anyio.sleep(0.1)


async def test_two_server_processes_share_a_store_while_one_restarts_and_lose_no_image(
    tmp_path: Path, tiny_dir: Path
) -> None:
    store = tmp_path / "store"
    config = tmp_path / "config.toml"
    config.write_text(f'profile = "tiny"\n[server]\nstore_dir = "{store}"\ntiny_dir = "{tiny_dir}"\n')
    ports = [free_port(), free_port()]
    processes = [await _start(config, port) for port in ports]
    reported: list[str] = []
    stop = anyio.Event()
    grown = [anyio.Event()]  # set (and replaced) whenever an image is reported

    async def reports(count: int) -> None:
        target = len(reported) + count
        with anyio.fail_after(120):
            while len(reported) < target:
                await grown[0].wait()

    async def write(index: int) -> None:
        """Generate images on one server until told to stop; calls cut by a restart are retried."""
        seed = index * 1_000_000
        while not stop.is_set():
            try:
                async with http_client(f"http://127.0.0.1:{ports[index]}/mcp", timeout=60) as client:
                    while not stop.is_set():
                        seed += 1
                        made = await call_ok(client, "generate_image", {"prompt": "a red cube", "seed": seed})
                        reported.extend(image["id"] for image in made["images"])
                        grown[0].set()
                        grown[0] = anyio.Event()
            except Exception:  # the server is restarting: connect again
                await anyio.sleep(0.1)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write, 0)
            tg.start_soon(write, 1)
            for _ in range(RESTARTS):
                await reports(3)  # both keep writing between restarts
                processes[1].send_signal(signal.SIGKILL)  # killed mid-write: leftovers to clean up
                await processes[1].wait()
                processes[1] = await _start(config, ports[1])
            await reports(3)
            stop.set()
    finally:
        for process in processes:
            process.terminate()
            await process.wait()

    assert len(reported) >= (RESTARTS + 1) * 3
    missing = [
        image_id
        for image_id in set(reported)
        if not (store / image_id[:2] / f"{image_id}.json").is_file()
        or not (store / image_id[:2] / f"{image_id}.png").is_file()
    ]
    assert missing == []
