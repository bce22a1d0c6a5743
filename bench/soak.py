"""Soak test: honest and hostile clients of several principals against the HTTP server, for a while.

Starts the server (tiny profile, a fresh store, static tokens for five principals, tight limits so
the hostile traffic reaches them) on a loopback port. For ``--seconds``, three honest principals
make mixed tool calls one after another, while two hostile ones, all at once:

- hold idle connections and send request heads a byte at a time (connection cap, header timeout);
- open sessions without end (sessions per principal);
- send a response_schema with a backtracking pattern and one whose ``$ref`` points to itself;
- reuse one JSON-RPC id in concurrent requests of one session (duplicate in-flight id);
- read a 1 MiB resource URI, send a 100,000-character argument name, a token as ``?access_token=``,
  Host and Origin values made to pass a prefix match, and broken JSON;
- start classifications with 64 long labels, whose finished jobs are kept (retained job bounds).

Then every image an honest call reported is read back. Reports: hangs (an honest call unanswered
within ``--call-timeout``; none allowed), the server's resident memory at the end against the start
(after a warm-up that loads every model; within 10%), images lost (none), the slowest answer an
honest client got, and counts of each kind of call. Exits 1 on a hang, a lost image, an honest call
failing other than as busy, or memory growing more than 10%.

    python bench/soak.py --seconds 120           # what CI runs
    python bench/soak.py --seconds 1800          # the README's figures
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from load_test import _client, _finish_job, _gradient_uri, _text, read_back

HONEST = ("alice", "bob", "carol")
HOSTILE = ("mallory", "trudy")
LIMITS = {
    "max_connections": 64,
    "header_timeout_seconds": 2,
    "max_sessions_per_principal": 8,
    "max_requests_per_session": 8,
    "session_idle_seconds": 60,
}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "soak", "version": "0"},
    },
}


@dataclass
class Tally:
    honest_calls: int = 0
    busy: int = 0
    hangs: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0
    slowest_tool: str = ""
    reported: dict[str, list[str]] = field(default_factory=dict)
    hostile: Counter[str] = field(default_factory=Counter)


def rss_bytes(pid: int) -> int:
    """The process's resident memory (Linux /proc), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/<pid>/status")


@contextmanager
def soak_server(args: argparse.Namespace, tokens: dict[str, str]) -> Iterator[tuple[str, int]]:
    """The server in a subprocess on a free loopback port; yields its URL and pid."""
    with tempfile.TemporaryDirectory(prefix="mmcp-soak-") as tmp:
        root = Path(tmp)
        lines = ['profile = "tiny"', "[server]", f'store_dir = "{root / "store"}"']
        if args.tiny_dir:
            lines.append(f'tiny_dir = "{args.tiny_dir}"')
        lines += ["[server.pool]", "max_queue = 4", "max_jobs_per_principal = 16", "job_wait_seconds = 20"]
        lines += ["[server.http]", *(f"{key} = {value}" for key, value in LIMITS.items())]
        (root / "config.toml").write_text("\n".join(lines) + "\n")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        env = {**os.environ, "MULTIMODAL_MCP_TOKENS": ",".join(f"{p}:{t}" for p, t in tokens.items())}
        log = (root / "server.log").open("wb")
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
        process = subprocess.Popen(
            [*command, "--config", str(root / "config.toml"), "--log-level", "WARNING"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"the server exited ({process.returncode})")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the server did not start in 120 s") from None
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/mcp", process.pid
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
            size = (root / "server.log").stat().st_size
            print(f"server log:          {size} bytes")
            if args.show_log:
                print((root / "server.log").read_text(errors="replace")[-4000:], file=sys.stderr)


# --- honest clients ---------------------------------------------------------------------------------

TOOLS = ("generate_image", "clip_classify", "describe_image", "compare_images", "list_models")


def _arguments(tool: str, n: int, mine: list[str]) -> dict[str, Any]:
    image = mine[-1] if mine else _gradient_uri(n)
    if tool == "generate_image":
        return {"prompt": f"a lighthouse {n}", "seed": n, "steps": 2}
    if tool == "clip_classify":
        return {"image": image, "labels": ["a lighthouse", "a cat", "noise"]}
    if tool == "describe_image":
        return {"image": image, "max_tokens": 8}
    if tool == "compare_images":
        return {"image_a": image, "image_b": _gradient_uri(n + 1)}
    return {}


async def honest(url: str, principal: str, token: str, until: float, tally: Tally, limit: float) -> None:
    """Calls one after another until ``until``; a session the server breaks is a failure, and the
    client opens a new one."""
    mine = tally.reported.setdefault(principal, [])
    n = [(HONEST.index(principal) + 1) * 100_000]
    while time.monotonic() < until:
        try:
            async with _client(url, token, limit) as client:
                while time.monotonic() < until:
                    await _honest_call(client, principal, n, mine, tally, limit)
        except Exception as exc:
            tally.failures.append(f"{principal}: session broken: {type(exc).__name__}: {str(exc)[:200]}")


async def _honest_call(
    client: Any, principal: str, n: list[int], mine: list[str], tally: Tally, limit: float
) -> None:
    n[0] += 1
    tool = TOOLS[n[0] % len(TOOLS)]
    tally.honest_calls += 1
    started = time.monotonic()
    try:
        with anyio.fail_after(limit):
            result = await client.call_tool(tool, _arguments(tool, n[0], mine))
            structured = result.structured_content or {}
            if not result.is_error and "job" in structured:
                result = await _finish_job(client, structured)
                structured = (result.structured_content or {}).get("result") or {}
    except TimeoutError:
        tally.hangs.append(f"{principal} {tool}: no answer within {limit:.0f} s")
        return
    took = time.monotonic() - started
    if took > tally.slowest:
        tally.slowest, tally.slowest_tool = took, tool
    if result.is_error:
        text = _text(result)
        if "is busy" in text:
            tally.busy += 1
        else:
            tally.failures.append(f"{principal} {tool}: {text[:200]}")
        return
    mine.extend(image["uri"] for image in structured.get("images", []))


# --- hostile clients ----------------------------------------------------------------------------------


async def _post(http: httpx2.AsyncClient, url: str, body: Any, headers: dict[str, str]) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await http.post(url, content=content, headers={**JSON_HEADERS, **headers})


async def _post_quietly(
    http: httpx2.AsyncClient, url: str, body: Any, headers: dict[str, str], tally: Tally
) -> None:
    try:
        await _post(http, url, body, headers)
    except httpx2.HTTPError:
        tally.hostile["hostile requests cut"] += 1


async def _session(http: httpx2.AsyncClient, url: str, auth: dict[str, str]) -> dict[str, str] | None:
    opened = await _post(http, url, INITIALIZE, auth)
    if "mcp-session-id" not in opened.headers:
        return None
    headers = {**auth, "mcp-session-id": opened.headers["mcp-session-id"]}
    await _post(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
    return headers


async def hold_connections(port: int, until: float, tally: Tally) -> None:
    """Idle sockets and request heads sent a byte at a time, reopened as the server closes them."""

    async def one(slow: bool) -> None:
        while time.monotonic() < until:
            try:
                sock = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                tally.hostile["connection refused"] += 1
                await anyio.sleep(0.5)
                continue
            async with sock:
                tally.hostile["connections held"] += 1
                try:
                    for byte in b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n" if slow else b"":
                        await sock.send(bytes([byte]))
                        await anyio.sleep(0.5)
                    with anyio.move_on_after(max(0.0, until - time.monotonic())):
                        await sock.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass
                tally.hostile["connections closed by the server"] += 1

    async with anyio.create_task_group() as tg:
        for i in range(96):  # above the 64-connection cap
            tg.start_soon(one, i % 2 == 0)


async def flood(url: str, token: str, until: float, tally: Tally, limit: float) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    schema_slow = {"type": "string", "pattern": "^(a|aa)+$"}
    schema_loop = {"$ref": "#"}
    async with httpx2.AsyncClient(timeout=limit) as http:
        sessions: list[dict[str, str]] = []
        n = 0
        while time.monotonic() < until:
            n += 1
            try:
                with anyio.fail_after(limit):
                    step = n % 7
                    if step == 0:  # sessions without end
                        opened = await _session(http, url, auth)
                        tally.hostile["sessions opened" if opened else "sessions refused"] += 1
                        if opened:
                            sessions.append(opened)
                        continue
                    if not sessions:
                        opened = await _session(http, url, auth)
                        if opened is None:
                            tally.hostile["sessions refused"] += 1
                            await anyio.sleep(0.5)
                            continue
                        sessions.append(opened)
                    headers = sessions[n % len(sessions)]
                    if step == 1:  # untrusted computation
                        for schema in (schema_slow, schema_loop):
                            call = {
                                "name": "describe_image",
                                "arguments": {"image": _gradient_uri(n), "response_schema": schema},
                            }
                            await _post(
                                http,
                                url,
                                {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": call},
                                headers,
                            )
                        tally.hostile["hostile schemas"] += 2
                    elif step == 2:  # one id in flight twice
                        labels = [f"label {i} " + "x" * 800 for i in range(64)]
                        call = {
                            "name": "clip_classify",
                            "arguments": {"image": _gradient_uri(n), "labels": labels},
                        }
                        body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": call}
                        async with anyio.create_task_group() as tg:
                            for _ in range(3):
                                tg.start_soon(_post_quietly, http, url, body, headers, tally)
                        tally.hostile["duplicate ids and big jobs"] += 1
                    elif step == 3:  # echoes
                        await _post(
                            http,
                            url,
                            {
                                "jsonrpc": "2.0",
                                "id": n,
                                "method": "resources/read",
                                "params": {"uri": "image://" + "a" * (1 << 20)},
                            },
                            headers,
                        )
                        call = {"name": "list_models", "arguments": {"x" * 100_000: 1}}
                        await _post(
                            http,
                            url,
                            {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": call},
                            headers,
                        )
                        tally.hostile["huge echoes"] += 2
                    elif step == 4:  # credentials and headers
                        await http.post(f"{url}?access_token={token}", content=b"{}", headers=JSON_HEADERS)
                        await _post(
                            http,
                            url,
                            {"jsonrpc": "2.0", "id": n, "method": "ping"},
                            {**headers, "Host": "localhost:1@attacker.example"},
                        )
                        await _post(
                            http,
                            url,
                            {"jsonrpc": "2.0", "id": n, "method": "ping"},
                            {**headers, "Origin": "http://localhost:1@attacker.example"},
                        )
                        tally.hostile["query tokens and forged hosts"] += 3
                    else:  # broken JSON
                        await _post(http, url, b'{"jsonrpc": "2.0", "id": ', headers)
                        tally.hostile["broken JSON"] += 1
            except TimeoutError:
                tally.hostile["hostile requests unanswered"] += 1
            except httpx2.HTTPError:
                tally.hostile["hostile requests cut"] += 1


# --- the run ------------------------------------------------------------------------------------------


async def soak(url: str, pid: int, tokens: dict[str, str], args: argparse.Namespace) -> int:
    tally = Tally()
    port = int(url.split(":")[2].split("/")[0])
    # Warm-up: every tool once per honest principal, so every model is loaded before the start figure.
    warm_until = time.monotonic() + 1
    async with anyio.create_task_group() as tg:
        for principal in HONEST:
            tg.start_soon(honest, url, principal, tokens[principal], warm_until, tally, args.call_timeout)
    async with _client(url, tokens[HONEST[0]], args.call_timeout) as client:
        for tool in TOOLS:
            await client.call_tool(tool, _arguments(tool, 1, []))
    start_rss = rss_bytes(pid)
    started = time.monotonic()
    until = started + args.seconds
    async with anyio.create_task_group() as tg:
        for principal in HONEST:
            tg.start_soon(honest, url, principal, tokens[principal], until, tally, args.call_timeout)
        for principal in HOSTILE:
            tg.start_soon(flood, url, tokens[principal], until, tally, args.call_timeout)
        tg.start_soon(hold_connections, port, until, tally)
    elapsed = time.monotonic() - started
    end_rss = rss_bytes(pid)

    lost = 0
    problems: list[str] = []
    reported = 0
    for principal, uris in tally.reported.items():
        read, found = await read_back(url, tokens[principal], uris, args.call_timeout)
        lost += len(uris) - read
        reported += len(uris)
        problems += found
    growth = end_rss / start_rss - 1
    print(f"ran:                 {elapsed:.0f} s, {len(HONEST)} honest and {len(HOSTILE)} hostile principals")
    print(f"honest calls:        {tally.honest_calls} ({tally.busy} refused as busy)")
    print(f"hangs:               {len(tally.hangs)}")
    print(f"honest failures:     {len(tally.failures)}")
    print(f"slowest answer:      {tally.slowest:.1f} s ({tally.slowest_tool})")
    print(
        f"memory:              {start_rss / 2**20:.0f} MiB at the start, "
        f"{end_rss / 2**20:.0f} MiB at the end ({growth:+.1%})"
    )
    print(f"images:              {reported} reported, {lost} lost")
    for kind, count in sorted(tally.hostile.items()):
        print(f"  hostile: {kind + ':':34} {count}")
    for line in [*tally.hangs, *tally.failures, *problems][:20]:
        print(f"  {line}", file=sys.stderr)
    bad = tally.hangs or tally.failures or lost or growth > args.max_growth
    return 1 if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="how long the traffic runs (default 120)")
    parser.add_argument(
        "--call-timeout", type=float, default=120, help="an honest call unanswered this long hangs"
    )
    parser.add_argument("--max-growth", type=float, default=0.10, help="memory growth allowed (default 0.10)")
    parser.add_argument("--tiny-dir", type=Path, help="tiny models for the server (default: its cache)")
    parser.add_argument("--show-log", action="store_true", help="print the end of the server's log")
    args = parser.parse_args()
    tokens = {principal: secrets.token_urlsafe(24) for principal in (*HONEST, *HOSTILE)}
    with soak_server(args, tokens) as (url, pid):
        code = anyio.run(soak, url, pid, tokens, args)
    sys.exit(code)


if __name__ == "__main__":
    main()
