"""The server as users run it: a subprocess speaking MCP over stdio."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from mcp import Client, StdioServerParameters

from helpers import call_ok, open_png, read_png


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
    params = StdioServerParameters(command="/bin/sh", args=["-c", command])
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
