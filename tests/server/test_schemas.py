"""The tool schemas as clients get them: portable (every converter takes them) and lean."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from mcp import Client
from PIL import Image

from multimodal_mcp.server.app import build_server
from multimodal_mcp.server.schemas import lean_output_schema, portable_input_schema
from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.controlled_generate import ControlledGenerateParams
from multimodal_mcp.tools.describe_image import DescribeImageParams

from fake_hub import FakeHub, FakeVisionChat
from helpers import call_error, call_ok, data_uri

pytestmark = pytest.mark.anyio  # marked at collection, so that parametrized tests keep their ids

RECEIPT_SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "number"}, "date": {"type": "string"}},
    "required": ["total", "date"],
}


@pytest.fixture
async def fake_client(fake_services: Services) -> AsyncIterator[Client]:
    async with Client(build_server(fake_services.config, fake_services)) as client:
        yield client


def _keys(schema: Any) -> set[str]:
    """Every keyword used anywhere in ``schema`` (the names under ``properties`` excluded)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties":
                for sub in value.values():
                    found |= _keys(sub)
            else:
                found.add(key)
                found |= _keys(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= _keys(item)
    return found


def test_references_are_inlined_and_nullable_types_keep_their_description_and_other_defaults() -> None:
    original = ControlledGenerateParams.model_json_schema()
    assert "$defs" in original  # ControlSpec, by reference
    schema = portable_input_schema(original)
    assert not {"$ref", "$defs", "anyOf", "title", "additionalProperties"} & _keys(schema)
    controls = schema["properties"]["controls"]
    assert controls["type"] == ["array", "null"] and "default" not in controls  # omitted means null
    assert controls["description"] == original["properties"]["controls"]["description"]
    spec = original["$defs"]["ControlSpec"]
    assert controls["items"]["properties"]["type"]["enum"] == spec["properties"]["type"]["enum"]
    assert controls["items"]["required"] == spec["required"]
    assert controls["items"]["properties"]["scale"]["default"] == 0.8
    assert schema["properties"]["strength"]["default"] == 0.75
    width = schema["properties"]["width"]
    assert width["type"] == ["integer", "null"] and width["minimum"] == 64 and width["multipleOf"] == 8
    assert portable_input_schema(original) == schema  # the input is left as it was


def test_a_nullable_choice_keeps_null_among_its_values() -> None:
    detail = portable_input_schema(DescribeImageParams.model_json_schema())["properties"]["detail"]
    assert detail["type"] == ["string", "null"]
    assert detail["enum"][-1] is None and "low" in detail["enum"]
    jsonschema.validate({"detail": None}, {"type": "object", "properties": {"detail": detail}})


def test_an_open_object_argument_is_advertised_as_a_json_string() -> None:
    original = DescribeImageParams.model_json_schema()["properties"]["response_schema"]
    advertised = portable_input_schema(DescribeImageParams.model_json_schema())["properties"][
        "response_schema"
    ]
    assert advertised["type"] == ["string", "null"]
    assert advertised["contentMediaType"] == "application/json"
    assert advertised["description"].startswith(original["description"])
    assert advertised["description"].endswith("As a JSON string.")


@pytest.mark.parametrize(
    "value",
    [
        {"width": 512, "controls": [{"image": "image://x", "type": "depth", "scale": 1.0}]},
        {"control_image": "image://x", "width": None, "controls": None, "negative_prompt": None},
        {"control_image": "image://x", "width": 72, "control_type": "canny"},
    ],
)
def test_the_portable_schema_accepts_what_the_params_model_accepts(value: dict[str, Any]) -> None:
    arguments = {"prompt": "a cat", **value}
    ControlledGenerateParams.model_validate(arguments)
    jsonschema.validate(arguments, portable_input_schema(ControlledGenerateParams.model_json_schema()))


def test_the_lean_output_schema_keeps_its_definitions_and_validates_what_the_full_one_does() -> None:
    full = {
        "$defs": {
            "Ref": {
                "title": "Ref",
                "description": "An image.",
                "type": "object",
                "properties": {"id": {"title": "Id", "type": "string"}},
                "required": ["id"],
            }
        },
        "type": "object",
        "title": "Out",
        "properties": {
            "image": {"$ref": "#/$defs/Ref"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None, "description": "x"},
        },
        "required": ["image"],
    }
    lean = lean_output_schema(full)
    assert not {"title", "description", "anyOf"} & _keys(lean)
    assert lean["$defs"]["Ref"]["required"] == ["id"]
    good, bad = {"image": {"id": "a"}, "note": None}, {"image": {}, "note": 3}
    jsonschema.validate(good, lean)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, lean)


async def test_a_response_schema_given_as_a_json_string_reaches_the_model_as_an_object(
    fake_client: Client, fake_hub: FakeHub
) -> None:
    vlm = fake_hub.fakes["fake-vlm"]
    assert isinstance(vlm, FakeVisionChat)
    vlm.reply = '{"total": 23.47, "date": "2024-03-15"}'
    result = await call_ok(
        fake_client,
        "describe_image",
        {
            "image": data_uri(Image.new("RGB", (32, 24), "white")),
            "response_schema": json.dumps(RECEIPT_SCHEMA),
        },
    )
    assert vlm.calls[-1].schema == RECEIPT_SCHEMA
    assert result["data"] == {"total": 23.47, "date": "2024-03-15"}


async def test_unknown_arguments_are_still_refused_without_additional_properties_in_the_schema(
    fake_client: Client,
) -> None:
    tools = {tool.name: tool for tool in (await fake_client.list_tools()).tools}
    assert "additionalProperties" not in _keys(tools["controlled_generate"].input_schema)
    message = await call_error(fake_client, "list_models", {"tsk": "vlm"})
    assert "unknown argument(s) 'tsk'" in message and "accepted: task" in message
    message = await call_error(
        fake_client,
        "controlled_generate",
        {"prompt": "a cat", "controls": [{"image": "image://x", "weight": 1}]},
    )
    assert "controls.0.weight" in message


def _bench(name: str) -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("profile", ["default", "tiny"])
def test_the_tool_list_stays_within_its_token_budget(profile: str) -> None:
    tool_tokens = _bench("tool_tokens")
    measured = tool_tokens.measure(profile)
    assert len(measured["tools"]) == 8
    assert 1000 < measured["model_read"] <= tool_tokens.MODEL_READ_TARGET == 3000
    assert measured["model_read"] < measured["whole"] <= tool_tokens.WHOLE_TARGET == 8000


def test_every_argument_a_model_reads_is_described() -> None:
    for tool in _bench("tool_tokens").listed_tools("default"):
        assert tool["description"], tool["name"]
        for name, prop in tool["inputSchema"]["properties"].items():
            assert prop.get("description"), (tool["name"], name)


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("generate_image", {"prompt": "a fox", "model": "fake-hosted"}),
        ("generate_image", {"prompt": "a fox", "model": "fake-sd"}),
        ("describe_image", {"image": data_uri(Image.new("RGB", (32, 24), "white")), "model": "fake-vlm"}),
        ("list_models", {}),
    ],
)
async def test_a_call_as_strict_mode_sends_it_every_argument_with_defaults_and_nulls_works(
    fake_client: Client, tool: str, arguments: dict[str, Any]
) -> None:
    from agents.strict_schema import ensure_strict_json_schema

    listed = {t.name: t for t in (await fake_client.list_tools()).tools}
    strict = ensure_strict_json_schema(copy.deepcopy(listed[tool].input_schema))
    # A strict-mode model must send every property: its default where it has one, else null.
    sent = {name: prop.get("default") for name, prop in strict["properties"].items()}
    assert set(sent) == set(strict["required"])
    await call_ok(fake_client, tool, {**sent, **arguments})
