"""tools/list through the schema converters of the agent frameworks that call MCP servers.

Each converter takes the whole list at once (one schema it cannot read disables every tool), so
every tool of the server is converted, with the hosted models configured and without. Pinned in the
``converters`` extra (part of ``dev``): google-genai (Gemini function declarations from JSON
schema), the OpenAI Agents SDK (strict mode), and pydantic-ai (its OpenAI strict and Gemini schema
transformers).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.types import Tool

from multimodal_mcp.config import load_config
from multimodal_mcp.server.app import build_server
from multimodal_mcp.server.registration import model_visible


@pytest.fixture(params=["default", "tiny"])
def tools(request: pytest.FixtureRequest, tmp_path: Path) -> list[Tool]:
    config = load_config(
        profile=request.param,
        cache_dir=tmp_path / "cache",
        home=tmp_path,
        overrides={"store_dir": tmp_path / "store", "tiny_dir": tmp_path / "no-tiny-models"},
    )
    # What an agent framework's MCP client lists: the tools a model may see (not the view-only ones).
    listed = [tool for tool in anyio.run(build_server(config).list_tools) if model_visible(tool)]
    assert len(listed) == 8
    return listed


def _described(schema: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Top-level properties: name -> (description, default or None)."""
    return {
        name: (prop["description"], prop.get("default"))
        for name, prop in schema["properties"].items()
        if "description" in prop
    }


def test_google_genai_converts_every_tool_keeping_descriptions_and_defaults(tools: list[Tool]) -> None:
    from google.genai import _mcp_utils, types

    # What the SDK does with an MCP session among generate_content's tools.
    converted = _mcp_utils.mcp_to_gemini_tools(tools)
    assert len(converted) == len(tools)
    for tool, gemini in zip(tools, converted, strict=True):
        (declaration,) = gemini.function_declarations or []
        assert declaration.name == tool.name and declaration.description == tool.description
        parameters = declaration.parameters
        assert parameters is not None and parameters.type == types.Type.OBJECT
        properties = parameters.properties or {}
        assert set(properties) == set(tool.input_schema["properties"]), tool.name
        for name, (description, default) in _described(tool.input_schema).items():
            assert properties[name].description == description, (tool.name, name)
            assert properties[name].default == default, (tool.name, name)
        for name, prop in tool.input_schema["properties"].items():
            nullable = isinstance(prop.get("type"), list) and "null" in prop["type"]
            assert bool(properties[name].nullable) == nullable, (tool.name, name)


def test_the_openai_agents_sdk_converts_every_tool_in_strict_mode(
    tools: list[Tool], caplog: pytest.LogCaptureFixture
) -> None:
    from agents.mcp import MCPServerStdio, MCPUtil

    server = MCPServerStdio(params={"command": "unused"}, name="multimodal")  # never started
    with caplog.at_level(logging.INFO, logger="openai.agents"):
        converted = [MCPUtil.to_function_tool(tool, server, convert_schemas_to_strict=True) for tool in tools]
    assert "strict mode" not in caplog.text
    for tool, function in zip(tools, converted, strict=True):
        assert function.name == tool.name and function.strict_json_schema, tool.name
        schema = function.params_json_schema
        assert schema["additionalProperties"] is False  # unknown arguments refused by the schema too
        assert set(schema["required"]) == set(tool.input_schema["properties"])
        for name, (description, default) in _described(tool.input_schema).items():
            assert schema["properties"][name]["description"] == description, (tool.name, name)
            if default is not None:  # strict mode drops null defaults: null is the default there
                assert schema["properties"][name]["default"] == default, (tool.name, name)


def test_pydantic_ai_transforms_every_tool_for_openai_strict_mode_and_for_gemini(tools: list[Tool]) -> None:
    from pydantic_ai.profiles.google import GoogleJsonSchemaTransformer
    from pydantic_ai.profiles.openai import OpenAIJsonSchemaTransformer

    for tool in tools:
        openai = OpenAIJsonSchemaTransformer(copy.deepcopy(tool.input_schema), strict=True)
        strict = openai.walk()
        assert openai.is_strict_compatible, tool.name
        gemini = GoogleJsonSchemaTransformer(copy.deepcopy(tool.input_schema)).walk()
        for schema in (strict, gemini):
            for name, (description, _) in _described(tool.input_schema).items():
                texts = _strings(schema["properties"][name])
                assert any(description in text for text in texts), (tool.name, name)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []
