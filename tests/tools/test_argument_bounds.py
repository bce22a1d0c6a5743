"""Every tool argument is bounded (numbers and lists in the schema the model reads; string lengths,
which that schema leaves out, by the params model the server validates with), and the per-call
budgets are checked before any model is loaded or any image decoded."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mcp import Client

from multimodal_mcp.config import Limits
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.tools.clip_classify import ClipClassifyParams
from multimodal_mcp.tools.common import Params, Services
from multimodal_mcp.tools.compare_images import CompareImagesParams
from multimodal_mcp.tools.controlled_generate import ControlledGenerateParams
from multimodal_mcp.tools.describe_image import DescribeImageParams
from multimodal_mcp.tools.generate_image import GenerateImageParams
from multimodal_mcp.tools.jobs import CancelJobParams, GetJobParams
from multimodal_mcp.tools.list_models import ListModelsParams

from helpers import call_error, call_ok, cpu_only, data_uri, make_config, photo

PARAMS: dict[str, type[Params]] = {
    "generate_image": GenerateImageParams,
    "controlled_generate": ControlledGenerateParams,
    "clip_classify": ClipClassifyParams,
    "describe_image": DescribeImageParams,
    "compare_images": CompareImagesParams,
    "list_models": ListModelsParams,
    "get_job": GetJobParams,
    "cancel_job": CancelJobParams,
}


def _unbounded(
    schema: dict[str, Any], defs: dict[str, Any], where: str, *, strings: bool = True
) -> list[str]:
    """Places in a JSON schema where a number or list has no upper bound; with ``strings`` (the params
    model's schema, which the server validates with) also strings and nested objects open to unknown
    keys (the advertised schema leaves both to the server, see server/schemas.py)."""
    if "$ref" in schema:
        return _unbounded(defs[schema["$ref"].rsplit("/", 1)[1]], defs, where, strings=strings)
    problems: list[str] = []
    for key in ("anyOf", "oneOf", "allOf"):
        for i, option in enumerate(schema.get(key, [])):
            problems += _unbounded(option, defs, f"{where}|{i}", strings=strings)
    kind = schema.get("type")
    if isinstance(kind, list):  # ["integer", "null"]: the non-null type carries the bounds
        (kind,) = [k for k in kind if k != "null"] or ["null"]
    if "enum" in schema or "const" in schema or kind in ("null", "boolean"):
        return problems
    if kind == "string" and strings and "maxLength" not in schema and "pattern" not in schema:
        problems.append(f"{where}: string without maxLength")
    if kind in ("integer", "number"):
        if "maximum" not in schema and "exclusiveMaximum" not in schema:
            problems.append(f"{where}: {kind} without maximum")
        if "minimum" not in schema and "exclusiveMinimum" not in schema:
            problems.append(f"{where}: {kind} without minimum")
    if kind == "array":
        if "maxItems" not in schema:
            problems.append(f"{where}: array without maxItems")
        problems += _unbounded(schema.get("items", {}), defs, f"{where}[]", strings=strings)
    if kind == "object":
        # The top level is the handler's signature; the params model behind it forbids extra keys.
        # An open map (response_schema: a JSON Schema document) must cap its keys; its total size and
        # depth are checked by the tool.
        nested = any(mark in where for mark in "|.[")
        closed = schema.get("additionalProperties") is False or not strings  # advertised: see schemas.py
        if nested and not closed and "maxProperties" not in schema:
            problems.append(f"{where}: object accepting unknown keys")
        for name, sub in schema.get("properties", {}).items():
            problems += _unbounded(sub, defs, f"{where}.{name}", strings=strings)
    return problems


async def test_every_tool_argument_has_an_upper_bound_in_its_schema(client: Client) -> None:
    tools = (await client.list_tools()).tools
    assert len(tools) >= 7
    problems: list[str] = []
    for tool in tools:
        schema = tool.input_schema
        problems += _unbounded(schema, schema.get("$defs", {}), tool.name, strings=False)
        validated = PARAMS[tool.name].model_json_schema()
        problems += _unbounded(validated, validated.get("$defs", {}), f"{tool.name} (params)")
        error = await call_error(client, tool.name, {"unexpected_argument": "x" * 100})
        assert "unexpected_argument" in error
    assert problems == []


async def test_generation_argument_descriptions_state_their_bounds(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    props = tools["generate_image"].input_schema["properties"]

    # The schema's bounds are keywords every converter keeps; the descriptions name the server's own
    # limits, which a schema cannot state.
    assert (props["width"]["minimum"], props["width"]["maximum"], props["width"]["multipleOf"]) == (
        64,
        4096,
        8,
    )
    assert "max_side" in props["width"]["description"]
    assert (props["steps"]["minimum"], props["steps"]["maximum"]) == (1, 200)
    assert "max_steps" in props["steps"]["description"]
    assert "max_images" in props["num_images"]["description"]
    assert (props["guidance_scale"]["minimum"], props["guidance_scale"]["maximum"]) == (0, 30)
    assert "pixel-steps" in (tools["generate_image"].description or "")


def _services(tmp_path: Path, tiny_dir: Path, allowed_root: Path, **limits: Any) -> Services:
    config = make_config(tmp_path, tiny_dir, allowed_root, limits=limits)
    return create_services(config, devices=cpu_only())


async def test_the_pixel_steps_budget_is_checked_before_any_model_loads(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    services = _services(tmp_path, tiny_dir, allowed_root, max_pixel_steps_per_call=64 * 64 * 2 * 2)
    async with Client(build_server(services.config, services)) as client:
        args = {"prompt": "a boat", "width": 64, "height": 64, "steps": 3, "num_images": 2}
        error = await call_error(client, "generate_image", args)
        assert "width*height*steps*num_images = 64*64*3*2 = 24576" in error
        assert "compute budget of 16384" in error and "max_pixel_steps_per_call" in error
        assert "fewer steps" in error
        error = await call_error(
            client, "controlled_generate", {**args, "reference_image": "image://" + "0" * 16}
        )
        assert "= 24576" in error  # the budget, not the unknown reference image: checked first
        assert services.pool.load_counts == {}
        # Within the budget, the same call runs.
        await call_ok(client, "generate_image", {**args, "steps": 2})


async def test_controlled_generate_checks_the_budget_before_decoding_any_input(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    services = _services(tmp_path, tiny_dir, allowed_root, max_pixel_steps_per_call=64 * 64 * 4)
    async with Client(build_server(services.config, services)) as client:
        error = await call_error(
            client,
            "controlled_generate",
            {"prompt": "x", "control_image": "@@not an image@@", "width": 64, "height": 64, "steps": 8},
        )
        assert "max_pixel_steps_per_call" in error and "not an image" not in error
        # With init_image the size comes from the image, so the budget is checked once it is decoded,
        # still before any model is loaded.
        error = await call_error(
            client,
            "controlled_generate",
            {"prompt": "x", "init_image": data_uri(photo("astronaut", 64)), "steps": 8},
        )
        assert "64*64*8*1" in error
        assert services.pool.load_counts == {}
        # 64 px is as small as it goes; the error names a step count that fits, and that is taken.
        found = re.search(r"\(steps=(\d+)\)", error)
        assert found is not None, error
        steps = int(found.group(1))
        init = data_uri(photo("astronaut", 64))
        await call_ok(client, "controlled_generate", {"prompt": "x", "init_image": init, "steps": steps})
        # A larger init image is made smaller to fit the budget instead, keeping its aspect ratio.
        big = data_uri(photo("astronaut", None).resize((256, 128)))
        out = await call_ok(client, "controlled_generate", {"prompt": "x", "init_image": big, "steps": 2})
        width, height = out["parameters"]["width"], out["parameters"]["height"]
        assert width * height * 2 <= 64 * 64 * 4 and width == 2 * height
        assert any("per-call budget" in a["message"] for a in out["adjustments"])


async def test_prompt_limits_cover_negative_prompts_and_questions(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    services = _services(tmp_path, tiny_dir, allowed_root, max_prompt_chars=20)
    async with Client(build_server(services.config, services)) as client:
        error = await call_error(client, "generate_image", {"prompt": "a boat", "negative_prompt": "n" * 21})
        assert "negative_prompt is 21 characters; this server's limit is 20 (max_prompt_chars)" in error
        error = await call_error(client, "describe_image", {"image": data_uri(photo()), "prompt": "q" * 21})
        assert "prompt is 21 characters; this server's limit is 20" in error
        assert services.pool.load_counts == {}


async def test_schema_bounds_reject_oversized_arguments_with_the_bound_named(client: Client) -> None:
    """The schema's bound, or this server's own limit where it is lower (the value that works)."""
    limits = Limits()
    own_side = limits.max_side - limits.max_side % 8
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("generate_image", {"prompt": "p" * 4001}, "4000"),
        ("generate_image", {"prompt": "p", "steps": 10_000}, f"use steps={limits.max_steps} or less"),
        ("generate_image", {"prompt": "p", "num_images": 1000}, f"num_images={limits.max_images} or less"),
        ("generate_image", {"prompt": "p", "width": 100_000}, f"use width={own_side} or less"),
        ("generate_image", {"prompt": "p", "guidance_scale": 1e9}, "30"),
        ("generate_image", {"prompt": "p", "seed": 2**64}, "4294967295"),
        ("clip_classify", {"image": "image://0", "labels": ["l"] * 300}, "256"),
        ("clip_classify", {"image": "image://0", "labels": ["a", "b" * 201]}, "200"),
        ("describe_image", {"image": "image://0", "max_tokens": 10**6}, f"max_tokens={limits.max_tokens}"),
        ("get_job", {"job_id": "0" * 16, "wait_seconds": 1e6}, "50"),
        ("generate_image", {"prompt": "p", "model": "m" * 65}, "64"),
    ]
    for tool, args, bound in cases:
        error = await call_error(client, tool, args)
        assert bound in error, (tool, args, error)


async def test_server_limits_below_the_schema_bounds_name_the_limit(client: Client) -> None:
    limits = Limits()
    error = await call_error(client, "generate_image", {"prompt": "p", "steps": limits.max_steps + 1})
    assert f"steps={limits.max_steps + 1} exceeds this server's limit of {limits.max_steps}" in error
    error = await call_error(client, "generate_image", {"prompt": "p", "num_images": limits.max_images + 1})
    assert f"limit of {limits.max_images}" in error
    labels = [f"label {i}" for i in range(limits.max_labels + 1)]
    error = await call_error(client, "clip_classify", {"image": data_uri(photo()), "labels": labels})
    assert (
        f"number of labels={limits.max_labels + 1} exceeds this server's limit of {limits.max_labels}"
        in error
    )


async def test_a_clip_template_is_text_not_a_format_string(client: Client) -> None:
    image = data_uri(photo("chelsea", 32))
    hostile = "{} {0.__class__.__mro__}"
    out = await call_ok(
        client, "clip_classify", {"image": image, "labels": ["a cat", "a dog"], "template": hostile}
    )
    assert {score["label"] for score in out["labels"]} == {"a cat", "a dog"}


async def test_a_side_off_the_schema_step_names_the_two_values_that_pass(client: Client) -> None:
    message = await call_error(client, "generate_image", {"prompt": "x", "width": 100})
    assert "multiple of 8" in message and "use width=96 or width=104" in message
    await call_ok(client, "generate_image", {"prompt": "x", "width": 96, "height": 64, "steps": 1})
