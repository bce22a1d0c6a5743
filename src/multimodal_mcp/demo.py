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

from multimodal_mcp.views import stylesheet

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
    # The demo saves generated images and the diff, which the store keeps as PNGs (inputs may be
    # JPEG or WebP: the resource's MIME type says which).
    if path.suffix == ".png" and contents.mime_type != "image/png":
        raise RuntimeError(f"{uri} came back as {contents.mime_type}, not image/png")
    await anyio.Path(path).write_bytes(base64.b64decode(contents.blob))


async def _run(output_dir: Path, server_args: list[str]) -> Path:
    await anyio.Path(output_dir).mkdir(parents=True, exist_ok=True)
    # The server inherits this environment (cache locations, MULTIMODAL_MCP_CONFIG), as when run by hand.
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "multimodal_mcp", "serve", *server_args], env=dict(os.environ)
    )
    async with Client(params, read_timeout_seconds=600) as client:
        # Servers that can check prompt adherence while generating (verify=True) are asked to.
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        accepts = tools["generate_image"].input_schema.get("properties", {})
        verify: dict[str, Any] = {"verify": True} if "verify" in accepts else {}
        if "verify_labels" in accepts:
            verify["verify_labels"] = LABELS[:1]
        first = await _call(client, "generate_image", {"prompt": PROMPT, "seed": 7, **verify})
        first_uri = first["images"][0]["uri"]
        classes = await _call(client, "clip_classify", {"image": first_uri, "labels": LABELS})
        description = await _call(client, "describe_image", {"image": first_uri})
        second = await _call(client, "generate_image", {"prompt": REVISED, "seed": 7, **verify})
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


_CSS = """
body{max-width:72em;margin:2em auto;padding:0 1em}
.chain{color:var(--muted)}.sheet{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
.card{border:1px solid var(--line);border-radius:6px;padding:.6em;width:272px;font-size:13px}
.card h2{font-size:14px;margin:0 0 .4em}.thumb{display:block;width:256px;margin:0 auto .4em}
.thumb img{width:256px;height:auto;image-rendering:pixelated}
code{word-break:break-all}ul{list-style:none;padding:0;margin:.3em 0}li{margin:.15em 0}
blockquote{margin:.3em 0;color:var(--muted);font-style:italic}
"""
"""The report's own layout, on top of the views' stylesheet (boxes, bars, verdicts, fonts, colours)."""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _scores(title: str, scores: list[tuple[str, float]]) -> str:
    """Labelled probabilities or similarities in [0, 1] as bars."""
    items = "".join(
        f'<li>{_e(label)}: {score:.3f}<div class="bar"><span style="width:{max(0.0, min(score, 1.0)):.1%}">'
        "</span></div></li>"
        for label, score in scores
    )
    return f"<h3>{_e(title)}</h3><ul>{items}</ul>"


def _verification(result: dict[str, Any], image_id: str) -> str:
    """generate_image's prompt-adherence check of one image (``verify=True``), when there is one."""
    parts = []
    for check in result.get("verification") or []:
        if check["image_id"] != image_id:
            continue
        verdict = "pass" if check["passed"] else "fail"
        parts.append(f'<h3>verification: <span class="{verdict}">{verdict}ed</span></h3>')
        threshold = check.get("prompt_threshold")
        prompt = f"prompt (needs {threshold})" if threshold is not None else "prompt"
        scores = [(prompt, float(check["prompt_score"]))]
        scores += [(label, float(score)) for label, score in (check.get("label_scores") or {}).items()]
        parts.append(_scores("prompt adherence", scores))
        if check.get("missing_labels"):
            parts.append(f"<p>missing: {_e(', '.join(check['missing_labels']))}</p>")
    return "".join(parts)


def _card(title: str, image: dict[str, Any], facts: list[tuple[str, str]], body: str, boxes: str = "") -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in facts)
    return (
        f'<section class="card"><h2>{_e(title)}</h2>'
        f'<div class="thumb"><a href="{_e(image["id"])}.png"><img src="{_e(image["id"])}.png" '
        f'alt="{_e(image["id"])}"></a>{boxes}</div>'
        f"<dl><dt>id</dt><dd><code>{_e(image['id'])}</code></dd>{rows}</dl>{body}</section>"
    )


def _generated(title: str, result: dict[str, Any], body: str = "", boxes: str = "") -> str:
    image, parameters = result["images"][0], result["parameters"]
    facts = [
        ("prompt", _e(parameters["prompt"])),
        ("seed", _e(image["seed"])),
        ("model", _e(result["model"])),
        ("size", _e(f"{image['width']}x{image['height']}, {parameters['steps']} steps")),
    ]
    return _card(title, image, facts, body + _verification(result, image["id"]), boxes)


def _region_boxes(comparison: dict[str, Any], width: int, height: int) -> str:
    """The changed regions (in image_a's pixels) as outlines over a thumbnail of that size."""
    return "".join(
        f'<div class="box" style="left:{r["x"] / width:.2%};top:{r["y"] / height:.2%};'
        f'width:{r["width"] / width:.2%};height:{r["height"] / height:.2%}"></div>'
        for r in comparison["changed_regions"]
    )


def _html(steps: dict[str, Any]) -> str:
    """The chain as a contact sheet: every image with its id, prompt, seed and scores."""
    first, second, comparison = steps["first"], steps["second"], steps["comparison"]
    classes, description = steps["classification"], steps["description"]
    first_image = first["images"][0]
    classified = _scores(
        f"clip_classify ({classes['model']})", [(s["label"], float(s["score"])) for s in classes["labels"]]
    )
    described = (
        f"<h3>describe_image ({_e(description['model'])})</h3>"
        f"<blockquote>{_e(description['text'])}</blockquote>"
    )
    similarity = _scores(
        "compare_images",
        [
            ("SSIM", float(comparison["ssim"])),
            ("pixels changed", float(comparison["pixel_difference"])),
            (f"CLIP similarity ({comparison['clip_model']})", float(comparison["clip_similarity"])),
        ],
    )
    narrative = comparison.get("narrative")
    diff_facts = [
        ("compares", _e(f"{comparison['image_a']['id']} vs {comparison['image_b']['id']}")),
        ("changed regions", _e(len(comparison["changed_regions"]))),
    ]
    if narrative:
        diff_facts.append(("what changed", f"{_e(narrative)} <em>({_e(comparison['model'])})</em>"))
    boxes = _region_boxes(comparison, first_image["width"], first_image["height"])
    cards = [
        _generated("1. generate_image", first, classified + described),
        _generated("2. generate_image, revised prompt", second, "<p>outlined: changed regions</p>", boxes),
        _card("3. compare_images: difference heat map", comparison["diff_image"], diff_facts, similarity),
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>multimodal-mcp demo</title>
<style>{stylesheet()}{_CSS}</style></head><body>
<h1>multimodal-mcp demo</h1>
<p class="chain">generate &rarr; classify &rarr; describe &rarr; regenerate &rarr; compare,
through an MCP client over stdio. Click a thumbnail for the full-size PNG.</p>
<div class="sheet">{"".join(cards)}</div>
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
