"""What the chapter examples share: their options, starting the server over stdio, calling a tool.

Each example imports this module from its own folder, so ``python examples/<name>.py`` works from
anywhere. The server is this package's, started as a subprocess exactly as an MCP host starts it.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import BlobResourceContents, CallToolResult, TextContent
from PIL import Image


def options(doc: str | None) -> argparse.ArgumentParser:
    """The options every example takes: which models to serve and where to write files."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--profile",
        default="tiny",
        choices=["tiny", "default"],
        help="'tiny': offline random-weight models (noise, runs anywhere); 'default': the real checkpoints",
    )
    parser.add_argument(
        "--config", type=Path, help="a TOML config file for the server (its settings and extra models)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("example-output"), help="where images are written"
    )
    return parser


def connect(args: argparse.Namespace) -> Client:
    """An MCP client session with a freshly started server (stdio), for ``async with``."""
    server_args = ["-m", "multimodal_mcp", "serve", "--profile", args.profile, "--log-level", "WARNING"]
    if args.config is not None:
        server_args += ["--config", str(args.config)]
    server = StdioServerParameters(command=sys.executable, args=server_args, env=dict(os.environ))
    return Client(server, read_timeout_seconds=900)


async def call(
    client: Client, tool: str, arguments: dict[str, Any], *, may_fail: bool = False
) -> dict[str, Any]:
    """Call a tool, print its text summary, and return its structured result.

    A tool error ends the example, or returns ``{}`` with ``may_fail``. A call that outlasts the
    server's wait comes back as a job handle; this waits for the job.
    """
    result = _checked(tool, await client.call_tool(tool, arguments), may_fail)
    while "job" in result and result.get("result") is None:
        if result["job"]["status"] != "running":  # failed or cancelled: its summary said why
            if may_fail:
                return {}
            raise SystemExit(1)
        job = {"job_id": result["job"]["id"], "wait_seconds": 50}
        result = _checked("get_job", await client.call_tool("get_job", job), may_fail)
    return dict(result["result"]) if "job" in result else result


def _checked(tool: str, result: CallToolResult, may_fail: bool) -> dict[str, Any]:
    text = " ".join(block.text for block in result.content if isinstance(block, TextContent))
    if text:
        print(f"[{tool}] {text}")
    if result.is_error or result.structured_content is None:
        if may_fail:
            return {}
        raise SystemExit(1)
    return result.structured_content


async def save(client: Client, uri: str, path: Path) -> Path:
    """Write the full-resolution PNG behind an ``image://`` id to ``path``."""
    contents = (await client.read_resource(uri)).contents[0]
    if not isinstance(contents, BlobResourceContents):
        raise SystemExit(f"{uri} did not come back as an image")
    await anyio.Path(path.parent).mkdir(parents=True, exist_ok=True)
    await anyio.Path(path).write_bytes(base64.b64decode(contents.blob))
    print(f"wrote {path}")
    return path


def data_uri(image: Image.Image) -> str:
    """An image as a PNG data URI, one of the forms every image argument accepts."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def hint(args: argparse.Namespace, real_model: str) -> None:
    """On the tiny profile, say that the output is noise and how to run the real model."""
    if args.profile == "tiny":
        script = Path(sys.argv[0]).name
        print(f"(tiny profile: random weights, so the output means nothing. Meant for {real_model}:")
        print(f" python examples/{script} --profile default)")
