"""The official MCP TypeScript SDK client (@modelcontextprotocol/sdk, pinned in clients/package.json)
against the server, over stdio (the SDK spawns it) and over streamable HTTP, on the tiny profile.

clients/sdk_check.mjs calls every tool with chained ids, reads an image resource back as a PNG of the
reported size, asserts progress notifications arrive, aborts a running generation (the SDK sends
notifications/cancelled) and checks the device lane is freed, and follows and cancels a job."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_clients import CLIENTS, serve_command, server_env, start_http_server, write_config

CHECKS = [
    "tools/list",
    "generate_image",
    "resources/read",
    "clip_classify",
    "describe_image",
    "controlled_generate",
    "compare_images",
    "list_models",
    "progress",
    "cancellation",
    "jobs",
]
# Long enough for quick calls to finish after their model loads, short enough for a 100-step
# generation to come back as a job handle.
JOB_WAIT_SECONDS = 3


def run_check(node: str, *arguments: str) -> str:
    done = subprocess.run(
        [node, str(CLIENTS / "sdk_check.mjs"), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **server_env()},
    )
    assert done.returncode == 0, f"sdk_check.mjs failed:\n{done.stdout}\n{done.stderr[-4000:]}"
    passed = [line.split()[1].rstrip(":") for line in done.stdout.splitlines() if line.startswith("ok ")]
    assert passed[1:] == CHECKS, done.stdout
    assert "all checks passed" in done.stdout
    return done.stdout


def test_the_typescript_sdk_over_stdio_calls_every_tool_gets_progress_and_cancels(
    node: str, tmp_path: Path, tiny_dir: Path
) -> None:
    config = write_config(tmp_path, tiny_dir, job_wait_seconds=JOB_WAIT_SECONDS)
    output = run_check(node, "--stdio", "--", *serve_command(config))
    assert "connected over stdio to multimodal-mcp" in output


@pytest.fixture
def http_url(tmp_path: Path, tiny_dir: Path) -> Iterator[str]:
    config = write_config(tmp_path, tiny_dir, job_wait_seconds=JOB_WAIT_SECONDS)
    yield from start_http_server(config, tmp_path / "server.log")


def test_the_typescript_sdk_over_http_calls_every_tool_gets_progress_and_cancels(
    node: str, http_url: str
) -> None:
    output = run_check(node, "--http", http_url)
    assert f"connected over http {http_url} to multimodal-mcp" in output
