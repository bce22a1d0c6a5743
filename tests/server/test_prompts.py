"""MCP prompts (the workflows as commands) and protocol errors for a client's mistakes."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, TextContent

from multimodal_mcp.server.app import build_server
from multimodal_mcp.server.prompts import PROMPTS
from multimodal_mcp.tools.common import Services

pytestmark = pytest.mark.anyio  # marked at collection, so that parametrized tests keep their ids


@pytest.fixture
async def bare_client(fake_services: Services) -> AsyncIterator[Client]:
    """A client of a server on the fake hub: listing and prompts need no model."""
    async with Client(build_server(fake_services.config, fake_services)) as client:
        yield client


async def _text(client: Client, name: str, arguments: dict[str, str]) -> str:
    result = await client.get_prompt(name, arguments)
    (message,) = result.messages
    assert message.role == "user" and isinstance(message.content, TextContent)
    return message.content.text


async def test_the_prompts_are_listed_with_titles_and_described_arguments(bare_client: Client) -> None:
    listed = {p.name: p for p in (await bare_client.list_prompts()).prompts}
    assert set(listed) == {"make_and_check", "edit_with_mask", "compare_before_after"}
    for prompt in listed.values():
        assert prompt.title and prompt.description
        assert prompt.arguments and all(argument.description for argument in prompt.arguments)
    required = {name: {a.name for a in p.arguments or () if a.required} for name, p in listed.items()}
    assert required == {
        "make_and_check": {"subject"},
        "edit_with_mask": {"image", "mask", "change"},
        "compare_before_after": {"before", "after"},
    }


async def test_every_tool_and_argument_a_prompt_names_exists(bare_client: Client) -> None:
    tools = {
        tool.name: set(tool.input_schema["properties"]) for tool in (await bare_client.list_tools()).tools
    }
    arguments = {
        "make_and_check": {"subject": "a red bicycle", "must_show": "a bicycle, red paint"},
        "edit_with_mask": {"image": "image://a", "mask": "image://b", "change": "a lake"},
        "compare_before_after": {"before": "image://a", "after": "image://b", "focus": "the sky"},
    }
    for function, _ in PROMPTS:
        text = await _text(bare_client, function.__name__, arguments[function.__name__])
        named = [tool for tool in re.findall(r"\b([a-z]+_[a-z_]+)\b", text) if tool in tools]
        assert named, function.__name__
        for tool, given in re.findall(r"\b([a-z]+_[a-z_]+) with ((?:[a-z_]+=[^,;\n]+(?:, | and )?)+)", text):
            for argument in re.findall(r"([a-z_]+)=", given):
                assert argument in tools[tool], (function.__name__, tool, argument)


async def test_a_prompt_puts_its_arguments_into_the_tool_calls(bare_client: Client) -> None:
    text = await _text(
        bare_client, "make_and_check", {"subject": "a red bicycle", "must_show": "a bell, a basket"}
    )
    assert "a red bicycle" in text and "verify_labels=['a bell', 'a basket']" in text
    assert "at most 3 tries" in text
    assert "verify='fast'" in await _text(bare_client, "make_and_check", {"subject": "x", "attempts": "2"})
    text = await _text(
        bare_client, "edit_with_mask", {"image": "image://p", "mask": "image://m", "change": "a lake"}
    )
    assert "init_image='image://p', mask_image='image://m'" in text and "a lake" in text
    text = await _text(bare_client, "compare_before_after", {"before": "image://1", "after": "image://2"})
    assert "image_a='image://1', image_b='image://2'" in text and "in particular" not in text


@pytest.mark.parametrize(
    ("name", "arguments", "says"),
    [
        ("no_such_prompt", {}, "Unknown prompt: 'no_such_prompt'; prompts: compare_before_after, "),
        ("edit_with_mask", {"image": "image://p"}, "mask: Missing required argument"),
        (
            "make_and_check",
            {"subject": "x", "attempts": "9"},
            "attempts: must be a whole number from 1 to 5, or empty for the default (3)",
        ),
        ("make_and_check", {"subject": "x", "colour": "red"}, "colour: Unexpected keyword argument"),
    ],
)
async def test_an_unknown_prompt_or_a_bad_prompt_argument_is_a_32602_error_without_a_traceback(
    bare_client: Client, caplog: pytest.LogCaptureFixture, name: str, arguments: dict[str, str], says: str
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(MCPError) as raised:
        await bare_client.get_prompt(name, arguments)
    assert raised.value.code == INVALID_PARAMS
    assert says in raised.value.message
    assert not [record for record in caplog.records if record.exc_info], caplog.text


async def test_an_unknown_tool_is_a_32602_error_without_a_traceback(
    bare_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(MCPError) as raised:
        await bare_client.call_tool("generate_imagez", {"prompt": "a cat"})
    assert raised.value.code == INVALID_PARAMS
    assert raised.value.message.startswith("Unknown tool: 'generate_imagez'; tools: cancel_job, ")
    assert not [record for record in caplog.records if record.exc_info], caplog.text
