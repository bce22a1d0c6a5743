"""``multimodal-mcp demo``: the agent loop, end to end, through a real MCP client over stdio.

Starts the server as a subprocess, then generate -> classify -> describe -> regenerate -> compare,
and writes every image plus an HTML report. It is an MCP *client* of this package's server.
"""

from __future__ import annotations

import base64
import html
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import BlobResourceContents, CallToolResult, TextContent

PROMPT = "A lighthouse on a rocky coast at dusk, watercolor"
REVISED = "A red and white lighthouse on a rocky coast at dusk, watercolor, warm light"
LABELS = ["a lighthouse", "a cat", "a city street at night"]


def _text(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


async def _call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error or result.structured_content is None:
        raise RuntimeError(f"{tool} failed: {_text(result)}")
    print(f"[{tool}] {_text(result)}", file=sys.stderr)
    return result.structured_content


async def _save(client: Client, uri: str, path: Path) -> None:
    contents = (await client.read_resource(uri)).contents[0]
    if not isinstance(contents, BlobResourceContents):
        raise RuntimeError(f"{uri} did not come back as a binary resource")
    await anyio.Path(path).write_bytes(base64.b64decode(contents.blob))


async def _run(output_dir: Path, server_args: list[str]) -> Path:
    await anyio.Path(output_dir).mkdir(parents=True, exist_ok=True)
    # The server inherits this environment (cache locations, MULTIMODAL_MCP_CONFIG), as when run by hand.
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "multimodal_mcp", "serve", *server_args], env=dict(os.environ)
    )
    async with Client(params, read_timeout_seconds=600) as client:
        first = await _call(client, "generate_image", {"prompt": PROMPT, "seed": 7})
        first_uri = first["images"][0]["uri"]
        classes = await _call(client, "clip_classify", {"image": first_uri, "labels": LABELS})
        description = await _call(client, "describe_image", {"image": first_uri})
        second = await _call(client, "generate_image", {"prompt": REVISED, "seed": 7})
        second_uri = second["images"][0]["uri"]
        comparison = await _call(
            client, "compare_images", {"image_a": first_uri, "image_b": second_uri, "describe": True}
        )
        for uri in (first_uri, second_uri, comparison["diff_image"]["uri"]):
            await _save(client, uri, output_dir / f"{uri.removeprefix('image://')}.png")

    steps = {
        "first": first,
        "classification": classes,
        "description": description,
        "second": second,
        "comparison": comparison,
    }
    await anyio.Path(output_dir / "demo.json").write_text(json.dumps(steps, indent=2))
    report = output_dir / "report.html"
    await anyio.Path(report).write_text(_html(steps))
    return report


def _figure(image_id: str, caption: str) -> str:
    return (
        f'<figure><img src="{image_id}.png" alt="{image_id}" width="256">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _html(steps: dict[str, Any]) -> str:
    first, second, comparison = steps["first"], steps["second"], steps["comparison"]
    scores = "".join(
        f"<li>{html.escape(s['label'])}: {s['score']:.3f}</li>" for s in steps["classification"]["labels"]
    )
    cards = [
        _figure(
            first["images"][0]["id"],
            f"1. {first['parameters']['prompt']} (seed {first['seed']}, {first['model']})",
        ),
        _figure(
            second["images"][0]["id"],
            f"2. {second['parameters']['prompt']} (seed {second['seed']}, {second['model']})",
        ),
        _figure(comparison["diff_image"]["id"], "difference heat map"),
    ]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>multimodal-mcp demo</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
figure{{display:inline-block;margin:0 1em 1em 0}}
img{{image-rendering:pixelated;border:1px solid #ccc}}</style></head><body>
<h1>multimodal-mcp demo</h1>
<p>generate &rarr; classify &rarr; describe &rarr; regenerate &rarr; compare,
through an MCP client over stdio.</p>
{"".join(cards)}
<h2>clip_classify ({html.escape(steps["classification"]["model"])})</h2><ul>{scores}</ul>
<h2>describe_image ({html.escape(steps["description"]["model"])})</h2>
<blockquote>{html.escape(steps["description"]["text"])}</blockquote>
<h2>compare_images</h2>
<p>SSIM {comparison["ssim"]:.3f}, pixels changed {comparison["pixel_difference"]:.1%},
CLIP similarity {comparison["clip_similarity"]:.3f}, {len(comparison["changed_regions"])} changed regions.</p>
<blockquote>{html.escape(comparison.get("narrative") or "")}</blockquote>
</body></html>
"""


def run_demo(
    *, output_dir: Path, profile: str = "tiny", config_file: Path | None = None, store_dir: Path | None = None
) -> Path:
    """Run the demo chain against a freshly started server; returns the report's path."""
    args = ["--profile", profile, "--log-level", "WARNING"]
    if config_file is not None:
        args += ["--config", str(config_file)]
    if store_dir is not None:
        args += ["--store-dir", str(store_dir)]
    return anyio.run(_run, output_dir, args)
