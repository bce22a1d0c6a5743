"""The MCP Inspector CLI (@modelcontextprotocol/inspector, pinned in clients/package.json) against the
server, over stdio (the Inspector spawns it) and over streamable HTTP, on the tiny profile.

Each Inspector run is one session: over stdio every run starts a fresh server on the same image store,
so ids from one run are used in the next, as an agent would across calls."""

from __future__ import annotations

import base64
import io
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from node_clients import CLIENTS, serve_command, server_env, start_http_server, write_config
from PIL import Image

TOOLS = {
    "generate_image",
    "controlled_generate",
    "clip_classify",
    "describe_image",
    "compare_images",
    "list_models",
    "get_job",
    "cancel_job",
}
TOOL_ERROR_EXIT = 5  # the Inspector's exit code when a tool result has isError: true

Inspector = Callable[..., tuple[int, dict[str, Any]]]


def _inspector(node: str, target: list[str]) -> Inspector:
    """Runs ``inspector --cli --format json <options> <target>``; returns (exit code, the JSON result)."""
    package = CLIENTS / "node_modules" / "@modelcontextprotocol" / "inspector"
    launcher = package / "clients" / "launcher" / "build" / "index.js"  # the package's bin

    def run(*options: str, ok: bool = True) -> tuple[int, dict[str, Any]]:
        done = subprocess.run(
            [node, str(launcher), "--cli", "--format", "json", *options, *target],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        try:
            out = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"no JSON from the Inspector (exit {done.returncode}): {done.stderr[-3000:]}"
            ) from None
        if ok:
            assert done.returncode == 0 and "result" in out, f"{options}: {done.stdout[-2000:]}"
            assert not out["result"].get("isError"), out["result"]["content"]
        return done.returncode, out.get("result", out)

    return run


def call(inspector: Inspector, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """tools/call with JSON-valued arguments; returns the result (text, previews, structuredContent).

    A job handle (the call outlasted the server's wait) is followed with get_job, as an agent would."""
    _, result = inspector(
        "--method", "tools/call", "--tool-name", tool, "--tool-args-json", json.dumps(arguments)
    )
    while tool not in {"get_job", "cancel_job"} and "job" in (result.get("structuredContent") or {}):
        job = result["structuredContent"]["job"]
        assert f"get_job(job_id='{job['id']}'" in result["content"][0]["text"]
        result = call(inspector, "get_job", {"job_id": job["id"], "wait_seconds": 30})
        if result["structuredContent"]["job"]["status"] == "done":
            result = {**result, "structuredContent": result["structuredContent"]["result"]}
    return result


def structured(result: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(result.get("structuredContent"), dict), result
    return result["structuredContent"]


def png_size(blob: str) -> tuple[int, int]:
    img = Image.open(io.BytesIO(base64.b64decode(blob)))
    assert img.format == "PNG"
    return img.size


def exercise_every_tool(inspector: Inspector, *, listings: bool) -> None:
    """tools/list, every tool with ids chained from one call to the next, and the image resource;
    with ``listings`` also resources/list, resources/templates/list and an unknown job id."""
    # --strict: the Inspector exits 6 if a tool schema has a portability error.
    _, listed = inspector("--method", "tools/list", "--strict")
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert set(tools) == TOOLS
    assert all(tool["inputSchema"]["type"] == "object" and "outputSchema" in tool for tool in tools.values())

    made = call(
        inspector,
        "generate_image",
        {"prompt": "a red lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 3},
    )
    image = structured(made)["images"][0]
    assert (image["width"], image["height"], image["seed"]) == (64, 64, 3)
    assert [block["type"] for block in made["content"]] == ["text", "image", "resource_link"]
    assert made["content"][2]["uri"] == image["uri"] and image["uri"] in made["content"][0]["text"]

    _, read = inspector("--method", "resources/read", "--uri", image["uri"])
    (contents,) = read["contents"]
    assert contents["mimeType"] == "image/png" and png_size(contents["blob"]) == (64, 64)

    labels = ["a lighthouse", "a cat", "a bowl of soup"]
    classified = structured(call(inspector, "clip_classify", {"image": image["uri"], "labels": labels}))
    assert classified["top_label"] in labels and classified["image"]["id"] == image["id"]
    assert abs(sum(entry["score"] for entry in classified["labels"]) - 1) < 1e-3

    described = structured(call(inspector, "describe_image", {"image": image["uri"], "max_tokens": 8}))
    assert described["text"].strip() and described["tokens"] >= 1

    controlled = structured(
        call(
            inspector,
            "controlled_generate",
            {
                "prompt": "a tower",
                "control_image": image["uri"],
                "width": 64,
                "height": 64,
                "steps": 2,
                "seed": 1,
            },
        )
    )
    steered = controlled["images"][0]
    assert steered["id"] != image["id"] and (steered["width"], steered["height"]) == (64, 64)
    assert controlled["controls"][0]["type"] == "canny"

    compared = structured(
        call(inspector, "compare_images", {"image_a": image["uri"], "image_b": steered["uri"]})
    )
    assert -1 <= compared["ssim"] <= 1 and 0 <= compared["pixel_difference"] <= 1
    assert compared["diff_image"]["uri"].startswith("image://")

    models = structured(call(inspector, "list_models", {}))
    assert {"tiny-sd15", "tiny-clip", "tiny-vlm"} <= {model["name"] for model in models["models"]}
    assert models["profile"] == "tiny"

    if not listings:
        return
    _, templates = inspector("--method", "resources/templates/list")
    assert "image://{image_id}" in {t["uriTemplate"] for t in templates["resourceTemplates"]}
    _, resources = inspector("--method", "resources/list")
    assert "pool://status" in {r["uri"] for r in resources["resources"]}

    code, missing = inspector(
        "--method",
        "tools/call",
        "--tool-name",
        "get_job",
        "--tool-args-json",
        '{"job_id": "0123456789abcdef"}',
        ok=False,
    )
    assert (
        code == TOOL_ERROR_EXIT
        and missing["isError"]
        and "no job '0123456789abcdef'" in missing["content"][0]["text"]
    )


def test_the_inspector_cli_over_stdio_lists_and_calls_every_tool_and_reads_resources(
    node: str, tmp_path: Path, tiny_dir: Path
) -> None:
    config = write_config(tmp_path, tiny_dir)
    environment = [option for key, value in server_env().items() for option in ("-e", f"{key}={value}")]
    inspector = _inspector(node, [*environment, "--", *serve_command(config)])
    exercise_every_tool(inspector, listings=False)


@pytest.fixture
def http_url(tmp_path: Path, tiny_dir: Path) -> Iterator[str]:
    # A short job wait, so that a long generation returns a job handle for get_job and cancel_job.
    config = write_config(tmp_path, tiny_dir, job_wait_seconds=0.2)
    yield from start_http_server(config, tmp_path / "server.log")


def test_the_inspector_cli_over_http_calls_every_tool_and_follows_and_cancels_jobs(
    node: str, http_url: str
) -> None:
    inspector = _inspector(node, ["--transport", "http", "--server-url", http_url])
    exercise_every_tool(inspector, listings=True)

    # A generation longer than the server's wait returns a job handle; get_job reports progress, then
    # the result. Every Inspector run is a new session: the job outlives the session that started it.
    long = {"prompt": "a long one", "width": 256, "height": 256, "steps": 30, "seed": 5}
    _, handle = inspector(
        "--method", "tools/call", "--tool-name", "generate_image", "--tool-args-json", json.dumps(long)
    )
    job = handle["structuredContent"]["job"]
    assert job["status"] == "running" and job["tool"] == "generate_image"
    polled = structured(call(inspector, "get_job", {"job_id": job["id"], "wait_seconds": 0}))
    assert polled["job"]["status"] == "running" and polled["result"] is None
    while polled["job"]["status"] == "running":
        polled = structured(call(inspector, "get_job", {"job_id": job["id"], "wait_seconds": 50}))
    assert polled["job"]["status"] == "done" and polled["job"]["progress"] == polled["job"]["total"] == 30
    assert polled["result"]["images"][0]["width"] == 256 and polled["result"]["seed"] == 5

    # cancel_job stops a running generation and frees the device lane: the next call runs at once.
    longer = {**long, "width": 512, "height": 512, "steps": 100}  # about a minute on a CPU
    _, handle = inspector(
        "--method", "tools/call", "--tool-name", "generate_image", "--tool-args-json", json.dumps(longer)
    )
    job = handle["structuredContent"]["job"]
    cancelled = structured(call(inspector, "cancel_job", {"job_id": job["id"]}))
    assert cancelled["job"]["status"] == "cancelled", cancelled
    _, status = inspector("--method", "resources/read", "--uri", "pool://status")
    pool = json.loads(status["contents"][0]["text"])
    assert all(not device["running"] and device["queue_depth"] == 0 for device in pool["devices"]), pool
    quick = structured(
        call(inspector, "generate_image", {"prompt": "after", "width": 64, "height": 64, "steps": 2})
    )
    assert quick["images"][0]["width"] == 64
