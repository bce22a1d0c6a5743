"""Load test: N concurrent clients x M calls of mixed tools against the HTTP server.

Starts the server itself (tiny profile, a fresh store, a small queue, a static bearer token) on a
loopback port, or uses ``--url`` and ``--token`` for a running one. Every client makes its calls
(generate, classify, describe, compare, list) one after another; all clients run at once. Calls the
server refuses as busy are counted, not retried. Afterwards every image a call reported as made is
read back through a fresh session.

Prints calls made, refused as busy, failures, images reported, read back and lost. Exits 1 if any
image is lost or any call failed other than as busy (including a call that ran past --call-timeout,
or a server that does not answer right after the load).

    python bench/load_test.py                          # 4 clients x 6 calls
    python bench/load_test.py --clients 16 --calls 20 --max-queue 2
    python bench/load_test.py --url http://gpu-box:8000/mcp --token "$TOKEN"
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import BlobResourceContents, TextContent
from PIL import Image

TOOLS = [
    "generate_image",
    "clip_classify",
    "generate_image",
    "describe_image",
    "compare_images",
    "list_models",
]


@dataclass
class Tally:
    calls: int = 0
    busy: int = 0
    failures: list[str] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)


def _client(url: str, token: str | None, timeout: float) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=timeout)
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=timeout)


def _text(result: Any) -> str:
    return " ".join(b.text for b in result.content if isinstance(b, TextContent))


def _gradient_uri(i: int) -> str:
    img = Image.linear_gradient("L").resize((48, 48)).convert("RGB").rotate(i * 37)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _arguments(tool: str, client: int, call: int, mine: list[str]) -> dict[str, Any]:
    image = mine[-1] if mine else _gradient_uri(client * 100 + call)
    if tool == "generate_image":
        return {"prompt": f"client {client} call {call}", "seed": client * 1000 + call, "steps": 2}
    if tool == "clip_classify":
        return {"image": image, "labels": ["a lighthouse", "a cat", "noise"]}
    if tool == "describe_image":
        return {"image": image}
    if tool == "compare_images":
        return {"image_a": image, "image_b": _gradient_uri(call)}
    return {}


async def _finish_job(client: Client, structured: dict[str, Any]) -> Any:
    """Follow a job handle to the tool's result (the caller's deadline bounds the wait)."""
    job_id = structured["job"]["id"]
    while True:
        result = await client.call_tool("get_job", {"job_id": job_id, "wait_seconds": 30})
        if result.is_error or result.structured_content["job"]["status"] != "running":
            return result


async def run_client(
    url: str, token: str | None, index: int, calls: int, tally: Tally, call_timeout: float
) -> None:
    mine: list[str] = []
    async with _client(url, token, call_timeout) as client:
        for call in range(calls):
            tool = TOOLS[(index + call) % len(TOOLS)]
            tally.calls += 1
            try:
                with anyio.fail_after(call_timeout):
                    result = await client.call_tool(tool, _arguments(tool, index, call, mine))
                    structured = result.structured_content or {}
                    if not result.is_error and "job" in structured and tool != "get_job":
                        result = await _finish_job(client, structured)
                        structured = (result.structured_content or {}).get("result") or {}
            except TimeoutError:
                tally.failures.append(f"client {index} {tool}: no answer within {call_timeout:.0f} s")
                continue
            except Exception as exc:  # a broken session is a failure too, counted and reported
                tally.failures.append(f"client {index} {tool}: {type(exc).__name__}: {exc}")
                continue
            if result.is_error:
                text = _text(result)
                if "is busy" in text:
                    tally.busy += 1
                else:
                    tally.failures.append(f"client {index} {tool}: {text[:300]}")
                continue
            for image in structured.get("images", []):
                mine.append(image["uri"])
                tally.reported.append(image["uri"])


async def read_back(
    url: str, token: str | None, uris: list[str], call_timeout: float
) -> tuple[int, list[str]]:
    ok = 0
    problems = []
    async with _client(url, token, call_timeout) as client:
        for uri in uris:
            try:
                contents = (await client.read_resource(uri)).contents
                blob = contents[0]
                assert isinstance(blob, BlobResourceContents) and blob.mime_type == "image/png"
                Image.open(io.BytesIO(base64.b64decode(blob.blob)), formats=["PNG"]).load()
                ok += 1
            except Exception as exc:
                problems.append(f"{uri}: {type(exc).__name__}: {exc}")
    return ok, problems


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_server(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """The server on the tiny profile in a subprocess, on a free loopback port, with a fresh store."""
    with tempfile.TemporaryDirectory(prefix="mmcp-load-") as tmp:
        root = Path(tmp)
        config = root / "config.toml"
        lines = ['profile = "tiny"', "[server]", f'store_dir = "{root / "store"}"']
        if args.tiny_dir:
            lines.append(f'tiny_dir = "{args.tiny_dir}"')
        lines += ["[server.pool]", f"max_queue = {args.max_queue}"]
        config.write_text("\n".join(lines) + "\n")
        token = secrets.token_urlsafe(24)
        port = _free_port()
        log = (root / "server.log").open("wb")
        env = {**os.environ, "MULTIMODAL_MCP_TOKENS": f"load-test:{token}"}
        command = [sys.executable, "-m", "multimodal_mcp", "serve", "--transport", "http"]
        process = subprocess.Popen(
            [*command, "--port", str(port), "--config", str(config), "--log-level", "WARNING"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + args.start_timeout
            while True:
                if process.poll() is not None:
                    raise SystemExit(
                        f"the server exited ({process.returncode}):\n{_tail(root / 'server.log')}"
                    )
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"the server did not start in {args.start_timeout:.0f} s") from None
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/mcp", token
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
            if args.show_log:
                print(_tail(root / "server.log"), file=sys.stderr)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def load(url: str, token: str | None, args: argparse.Namespace) -> int:
    tally = Tally()
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for index in range(args.clients):
            tg.start_soon(run_client, url, token, index, args.calls, tally, args.call_timeout)
    elapsed = time.monotonic() - started

    # The server must answer a fresh call right after the load.
    try:
        with anyio.fail_after(args.call_timeout):
            async with _client(url, token, args.call_timeout) as client:
                fresh = await client.call_tool("list_models", {})
        if fresh.is_error:
            tally.failures.append(f"fresh call after the load failed: {_text(fresh)[:300]}")
    except Exception as exc:
        tally.failures.append(f"fresh call after the load: {type(exc).__name__}: {exc}")

    uris = list(tally.reported)
    read, problems = await read_back(url, token, uris, args.call_timeout)
    lost = len(uris) - read
    print(f"clients x calls:   {args.clients} x {args.calls} in {elapsed:.1f} s")
    print(f"calls made:        {tally.calls}")
    print(f"refused as busy:   {tally.busy}")
    print(f"failures:          {len(tally.failures)}")
    print(f"images reported:   {len(uris)}")
    print(f"images read back:  {read}")
    print(f"images lost:       {lost}")
    for line in [*tally.failures, *problems][:20]:
        print(f"  {line}", file=sys.stderr)
    return 1 if lost or tally.failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--calls", type=int, default=6, help="calls per client (default 6)")
    parser.add_argument("--max-queue", type=int, default=1, help="the started server's pool.max_queue")
    parser.add_argument("--call-timeout", type=float, default=120, help="seconds one call may take")
    parser.add_argument(
        "--start-timeout", type=float, default=120, help="seconds the server may take to start"
    )
    parser.add_argument("--url", help="a running server's MCP endpoint (then no server is started)")
    parser.add_argument(
        "--token", default=os.environ.get("MULTIMODAL_MCP_TOKEN"), help="bearer token for --url"
    )
    parser.add_argument(
        "--tiny-dir", type=Path, help="tiny models for the started server (default: its cache)"
    )
    parser.add_argument("--show-log", action="store_true", help="print the started server's log tail")
    args = parser.parse_args()
    if args.url:
        code = anyio.run(load, args.url, args.token, args)
    else:
        with local_server(args) as (url, token):
            code = anyio.run(load, url, token, args)
    sys.exit(code)


if __name__ == "__main__":
    main()
