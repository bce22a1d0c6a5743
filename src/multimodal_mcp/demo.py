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


class DemoError(Exception):
    """A step of the demo failed; the message says which and why, in one line."""


def _text(result: CallToolResult) -> str:
    return " ".join(block.text for block in result.content if isinstance(block, TextContent))


async def _call(client: Client, tool: str, arguments: dict[str, Any], *, show: bool = True) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error or result.structured_content is None:
        raise DemoError(f"{tool} failed: {_text(result)}")
    if show:
        print(f"[{tool}] {_text(result)}", file=sys.stderr)
    return result.structured_content


async def _save(client: Client, uri: str, path: Path) -> None:
    contents = (await client.read_resource(uri)).contents[0]
    if not isinstance(contents, BlobResourceContents):
        raise DemoError(f"{uri} did not come back as a binary resource")
    # The demo saves generated images and the diff, which the store keeps as PNGs (inputs may be
    # JPEG or WebP: the resource's MIME type says which).
    if path.suffix == ".png" and contents.mime_type != "image/png":
        raise DemoError(f"{uri} came back as {contents.mime_type}, not image/png")
    await anyio.Path(path).write_bytes(base64.b64decode(contents.blob))


async def _run(output_dir: Path, server_args: list[str]) -> Path:
    await anyio.Path(output_dir).mkdir(parents=True, exist_ok=True)
    # The server inherits this environment (cache locations, MULTIMODAL_MCP_CONFIG), as when run by hand.
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "multimodal_mcp", "serve", *server_args], env=dict(os.environ)
    )
    async with Client(params, read_timeout_seconds=600) as client:
        listed = await _call(client, "list_models", {}, show=False)
        # Models built with random weights (the tiny profile's) say so in the report.
        sources = {model["name"]: model["source"] for model in listed["models"]}
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

    used = {first["model"], classes["model"], description["model"], comparison["clip_model"]}
    steps = {
        "random_weights": sorted(name for name in used if str(sources.get(name, "")).startswith("tiny:")),
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
.random{color:var(--muted)}.meaning{color:var(--muted);font-size:12px;margin:.2em 0 .6em}
.notice{background:#fff8e1;border:1px solid #e8c36a;border-radius:6px;padding:.6em .8em}
"""
"""The report's own layout, on top of the views' stylesheet (boxes, bars, verdicts, fonts, colours)."""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _scores(title: str, scores: list[tuple[str, float]], meaning: str = "") -> str:
    """Labelled probabilities or similarities in [0, 1] as bars, with what they mean."""
    items = "".join(
        f'<li>{_e(label)}: {score:.3f}<div class="bar"><span style="width:{max(0.0, min(score, 1.0)):.1%}">'
        "</span></div></li>"
        for label, score in scores
    )
    explained = f'<p class="meaning">{_e(meaning)}</p>' if meaning else ""
    return f"<h3>{_e(title)}</h3><ul>{items}</ul>{explained}"


CLASSIFY_MEANING = (
    "How CLIP splits its belief among these labels only (the scores sum to 1): the highest is the "
    "likeliest of them, not a confidence that it is right."
)
VERIFY_MEANING = (
    "prompt: CLIP's cosine similarity of the image and the prompt (a good match scores about "
    "0.25-0.35); a label: the chance CLIP sees it rather than nothing specific."
)
COMPARE_MEANING = (
    "SSIM: structural likeness of the brightness, 1 = identical. Pixels changed: the share of pixels "
    "that differ noticeably. CLIP similarity: how alike CLIP finds the content, 1 = the same."
)


def _verification(result: dict[str, Any], image_id: str, random_weights: bool) -> str:
    """generate_image's prompt-adherence check of one image (``verify=True``), when there is one."""
    parts = []
    for check in result.get("verification") or []:
        if check["image_id"] != image_id:
            continue
        verdict = "passed" if check["passed"] else "failed"
        style = "pass" if check["passed"] else "fail" if not random_weights else "random"
        parts.append(f'<h3>verification: <span class="{style}">{verdict}</span></h3>')
        threshold = check.get("prompt_threshold")
        prompt = f"prompt (needs {threshold})" if threshold is not None else "prompt"
        scores = [(prompt, float(check["prompt_score"]))]
        scores += [(label, float(score)) for label, score in (check.get("label_scores") or {}).items()]
        parts.append(_scores("prompt adherence", scores, VERIFY_MEANING))
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


def _generated(
    title: str, result: dict[str, Any], random_weights: bool, body: str = "", boxes: str = ""
) -> str:
    image, parameters = result["images"][0], result["parameters"]
    facts = [
        ("prompt", _e(parameters["prompt"])),
        ("seed", _e(image["seed"])),
        ("model", _e(result["model"])),
        ("size", _e(f"{image['width']}x{image['height']}, {parameters['steps']} steps")),
    ]
    return _card(title, image, facts, body + _verification(result, image["id"], random_weights), boxes)


def _region_boxes(comparison: dict[str, Any], width: int, height: int) -> str:
    """The changed regions (in image_a's pixels) as outlines over a thumbnail of that size."""
    return "".join(
        f'<div class="box" style="left:{r["x"] / width:.2%};top:{r["y"] / height:.2%};'
        f'width:{r["width"] / width:.2%};height:{r["height"] / height:.2%}"></div>'
        for r in comparison["changed_regions"]
    )


def _random_notice(models: list[str]) -> str:
    if not models:
        return ""
    return (
        '<p class="notice"><strong>These results come from models with random weights</strong> '
        f"({_e(', '.join(models))}: the <code>tiny</code> profile, built offline so that everything runs "
        "on any CPU with no download). Random weights are the point, not a fault: the images are noise, "
        "the description is word salad, verification fails and the scores say nothing about the "
        "prompt (CLIP with random weights maps every image to nearly the same vector, so different "
        "images score close to 1.000). What the demo shows is the chain itself: every tool called "
        "through MCP, ids passed from one to the next. For real images run "
        "<code>multimodal-mcp pull --profile default</code> and "
        "<code>multimodal-mcp demo --profile default</code> on a machine with a GPU.</p>"
    )


def _html(steps: dict[str, Any]) -> str:
    """The chain as a contact sheet: every image with its id, prompt, seed and scores."""
    first, second, comparison = steps["first"], steps["second"], steps["comparison"]
    classes, description = steps["classification"], steps["description"]
    first_image = first["images"][0]
    random_weights = steps.get("random_weights") or []
    classified = _scores(
        f"clip_classify ({classes['model']})",
        [(s["label"], float(s["score"])) for s in classes["labels"]],
        CLASSIFY_MEANING,
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
        COMPARE_MEANING,
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
        _generated("1. generate_image", first, bool(random_weights), classified + described),
        _generated(
            "2. generate_image, revised prompt",
            second,
            bool(random_weights),
            "<p>outlined: changed regions</p>",
            boxes,
        ),
        _card("3. compare_images: difference heat map", comparison["diff_image"], diff_facts, similarity),
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>multimodal-mcp demo</title>
<style>{stylesheet()}{_CSS}</style></head><body>
<h1>multimodal-mcp demo</h1>
<p class="chain">generate &rarr; classify &rarr; describe &rarr; regenerate &rarr; compare,
through an MCP client over stdio. Click a thumbnail for the full-size PNG.</p>
{_random_notice(random_weights)}
<div class="sheet">{"".join(cards)}</div>
</body></html>
"""


def run_demo(
    *, output_dir: Path, profile: str = "tiny", config_file: Path | None = None, store_dir: Path | None = None
) -> Path:
    """Run the demo chain against a freshly started server; returns the report's path.

    Raises:
        DemoError: a step failed, or the server stopped; the message is one line.
    """
    args = ["--profile", profile, "--log-level", "WARNING"]
    if config_file is not None:
        args += ["--config", str(config_file)]
    if store_dir is not None:
        args += ["--store-dir", str(store_dir)]
    try:
        return anyio.run(_run, output_dir, args)
    except BaseException as exc:  # task groups wrap what failed: find the first curated failure
        raise _one_line(exc) from None


def _one_line(exc: BaseException) -> BaseException:
    if isinstance(exc, BaseExceptionGroup):
        found = [_one_line(inner) for inner in exc.exceptions]
        return next((e for e in found if isinstance(e, DemoError)), found[0])
    if isinstance(exc, DemoError | KeyboardInterrupt | SystemExit):
        return exc
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return DemoError(
        f"the server stopped or could not be reached ({type(exc).__name__}: {first}); see its message above"
    )
