"""Start-up: the first answers of ``multimodal-mcp serve`` against a bare MCP SDK server, over stdio.

Both sides are started as subprocesses by the MCP SDK's stdio client, exactly as an agent host starts
them, and timed from the launch to the answer to ``initialize`` (the session is up), then to the
answer to ``tools/list``. The bare server is the SDK's ``MCPServer`` (FastMCP in mcp 1.x) with one
tool, the floor any Python MCP server pays (Python, the SDK's imports, the stdio transport). Ours
runs on the ``tiny`` profile with a fresh store; no model is loaded by either side. The two sides
alternate, round after round, and medians are compared (target: at most 1.5x).

Both sides start from compiled bytecode, as installed packages do: the SDK's modules were compiled
when pip installed them, and this script compiles multimodal-mcp's first (``compileall``, into
``__pycache__`` or ``PYTHONPYCACHEPREFIX``). An editable install run with ``PYTHONDONTWRITEBYTECODE=1``
would otherwise compile its ~90 modules from source at every start (0.2-0.4 s on 2 cores), a cost of
that setup, not of the server.

Also printed: whether our server process had imported torch by the time it answered ``tools/list``
(read from ``pool://status``'s ``torch_imported``, when the server reports it).

    python bench/startup.py            # 7 rounds (about 40 s on 2 CPU cores)
    python bench/startup.py --quick    # 3 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import OFFLINE_ENV, median, record_ratio, table, temp_dir, write_config

TARGET = 1.5

BARE_SERVER = '''\
from mcp.server.mcpserver import MCPServer

app = MCPServer("bare")


@app.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return text


app.run()
'''


def header() -> None:
    import platform

    from _common import _version, cpu_model

    print("== startup: multimodal-mcp serve vs a bare MCP SDK server, over stdio ==")
    print(f"cpu:          {cpu_model()}, {os.cpu_count()} logical cores")
    print(
        f"versions:     python {platform.python_version()}, mcp {_version('mcp')}, "
        f"multimodal-mcp {_version('multimodal-mcp')}"
    )
    print()


def compile_bytecode() -> None:
    """multimodal-mcp's modules compiled to bytecode, as ``pip install`` compiles an installed package's
    (a no-op for the modules already compiled and unchanged)."""
    import compileall

    import multimodal_mcp

    package = Path(multimodal_mcp.__file__).resolve().parent
    if not compileall.compile_dir(package, quiet=1):
        raise SystemExit(f"compiling {package} to bytecode failed")
    print(f"bytecode:     {package} compiled (both sides start from bytecode)")
    print()


def params(args: list[str]) -> Any:
    from mcp import StdioServerParameters

    return StdioServerParameters(command=sys.executable, args=args, env={**os.environ, **OFFLINE_ENV})


async def first_answers(server: Any, *, ours: bool) -> tuple[float, float, bool | None]:
    """Seconds from launch to the ``initialize`` answer and to the ``tools/list`` answer, and
    whether the server had imported torch (ours only)."""
    from mcp import Client

    started = time.perf_counter()
    async with Client(server, read_timeout_seconds=120) as client:
        initialized = time.perf_counter() - started
        tools = await client.list_tools()
        listed = time.perf_counter() - started
        assert tools.tools, "no tools listed"
        torch_imported = None
        if ours:
            contents = (await client.read_resource("pool://status")).contents[0]
            torch_imported = json.loads(contents.text).get("torch_imported")
    return initialized, listed, torch_imported


async def main(args: argparse.Namespace) -> dict[str, float]:
    header()
    compile_bytecode()
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "ours": []}
    torch_seen: list[bool | None] = []
    with temp_dir("mmcp-bench-startup-") as tmp:
        bare_script = tmp / "bare_server.py"
        bare_script.write_text(BARE_SERVER)
        config = write_config(
            tmp / "server.toml", store_dir=tmp / "store", tiny_dir=tmp / "tiny", models={}, defaults={}
        )
        sides = {
            "bare": params([str(bare_script)]),
            "ours": params(
                ["-m", "multimodal_mcp", "serve", "--config", str(config), "--log-level", "WARNING"]
            ),
        }
        # One unmeasured start of each: the first start of a Python process pays cold file caches.
        for name, server in sides.items():
            await first_answers(server, ours=name == "ours")
        for r in range(args.rounds):
            order = ["bare", "ours"] if r % 2 == 0 else ["ours", "bare"]
            for name in order:
                initialized, listed, torch_imported = await first_answers(sides[name], ours=name == "ours")
                times[name].append((initialized, listed))
                if name == "ours":
                    torch_seen.append(torch_imported)
            print(
                f"round {r + 1}: bare {times['bare'][-1][1]:.2f} s, ours {times['ours'][-1][1]:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    med = {name: (median([t[0] for t in v]), median([t[1] for t in v])) for name, v in times.items()}
    rows = [
        [name, f"{med[name][0] * 1000:.0f}", f"{med[name][1] * 1000:.0f}"]
        for name, label in (("bare", "bare"), ("ours", "ours"))
    ]
    print(f"{args.rounds} rounds, alternating; medians")
    print(table(["server", "initialize answered (ms)", "tools/list answered (ms)"], rows))
    ratios = {
        "initialize": med["ours"][0] / med["bare"][0],
        "initialize + tools/list": med["ours"][1] / med["bare"][1],
    }
    print()
    for name, value in ratios.items():
        verdict = "pass" if value <= TARGET else "FAIL"
        print(f"ratio ours / bare, {name}: {value:.2f}x (target <= {TARGET}x: {verdict})")
    record_ratio(
        "start-up: initialize + tools/list over stdio",
        ratios["initialize + tools/list"],
        alternative="a bare MCP SDK server (MCPServer, one tool)",
        target=TARGET,
    )
    known = [t for t in torch_seen if t is not None]
    if known:
        print(f"torch imported by our server before tools/list was answered: {'yes' if any(known) else 'no'}")
    return ratios


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, help="measured starts of each server (default 7; 3 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


if __name__ == "__main__":
    started = time.perf_counter()
    anyio.run(main, parse_args())
    print(f"\ntotal script time {time.perf_counter() - started:.0f} s")
