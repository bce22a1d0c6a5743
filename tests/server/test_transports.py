"""The server as users run it: a subprocess speaking MCP over stdio or streamable HTTP."""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from helpers import call_ok, open_png, read_png, text_of


async def test_a_stdio_subprocess_serves_every_tool_and_writes_only_json_rpc_to_stdout(
    tmp_path: Path, tiny_dir: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'profile = "tiny"\n[server]\nstore_dir = "{tmp_path / "store"}"\ntiny_dir = "{tiny_dir}"\n'
    )
    stdout_log = tmp_path / "stdout.jsonl"
    serve = [sys.executable, "-m", "multimodal_mcp", "serve", "--config", str(config), "--log-level", "DEBUG"]
    # tee keeps a copy of everything the server writes to stdout, so the test can check each line.
    command = f"{shlex.join(serve)} | tee {shlex.quote(str(stdout_log))}"
    # The SDK starts a stdio server with a minimal environment; pass on what makes it run this
    # checkout (not whichever copy is installed) offline.
    passed = ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {key: os.environ[key] for key in passed if key in os.environ}
    params = StdioServerParameters(command="/bin/sh", args=["-c", command], env=env)
    async with Client(params, read_timeout_seconds=120) as client:
        made = await call_ok(client, "generate_image", {"prompt": "a lighthouse", "seed": 3})
        uri = made["images"][0]["uri"]
        assert open_png(await read_png(client, uri)).size == (64, 64)
        await call_ok(client, "clip_classify", {"image": uri, "labels": ["a lighthouse", "a cat"]})
        await call_ok(client, "describe_image", {"image": uri})
        await call_ok(client, "compare_images", {"image_a": uri, "image_b": uri, "describe": True})
        await call_ok(client, "controlled_generate", {"prompt": "a tower", "control_image": uri, "seed": 1})
        await call_ok(client, "list_models", {})

    lines = stdout_log.read_text().splitlines()
    assert len(lines) >= 8
    for line in lines:
        assert json.loads(line)["jsonrpc"] == "2.0", line[:200]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_http_transport_serves_tools_and_refuses_file_paths_by_default(
    tmp_path: Path, tiny_dir: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'profile = "tiny"\n[server]\nstore_dir = "{tmp_path / "store"}"\ntiny_dir = "{tiny_dir}"\n'
    )
    port = _free_port()
    command = [sys.executable, "-m", "multimodal_mcp", "serve", "--transport", "http", "--port", str(port)]
    process = await anyio.open_process([*command, "--config", str(config)], stdout=None, stderr=None)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        with anyio.fail_after(60):
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    await anyio.sleep(0.2)
        async with Client(url) as client:
            made = await call_ok(client, "generate_image", {"prompt": "x", "seed": 1})
            assert open_png(await read_png(client, made["images"][0]["uri"])).size == (64, 64)
            result = await client.call_tool("clip_classify", {"image": str(config), "labels": ["a", "b"]})
            assert result.is_error and "reading files is disabled" in text_of(result)
    finally:
        process.terminate()
        await process.wait()
