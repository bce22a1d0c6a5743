"""Claude models through the real ``anthropic`` SDK against a loopback fake of the Messages API."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from mcp import Client
from mcp.types import ElicitResult
from PIL import Image

from multimodal_mcp.config import SpendingSettings
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.tools.common import Services

from fake_providers import ANTHROPIC_KEY, AnthropicFake, anthropic_error
from helpers import call_error, call_ok, cpu_only, data_uri, photo

pytest.importorskip("anthropic")


def _image(block: dict[str, Any]) -> Image.Image:
    assert block["type"] == "image" and block["source"]["media_type"] == "image/png"
    return Image.open(io.BytesIO(base64.b64decode(block["source"]["data"]))).convert("RGB")


async def test_describe_image_sends_the_image_as_a_base64_block_and_reports_usage(
    hosted_client: Client, anthropic_fake: AnthropicFake
) -> None:
    image = photo("coffee", 40)
    out = await call_ok(
        hosted_client,
        "describe_image",
        {"image": data_uri(image), "prompt": "What is on the receipt?", "model": "claude-sonnet-5-5"},
    )
    (request,) = anthropic_fake.requests
    assert request.path == "/v1/messages"
    # The key travels as x-api-key (older SDKs) or as a bearer token (newer ones).
    sent_key = request.headers.get("x-api-key") or request.headers["authorization"].removeprefix("Bearer ")
    assert sent_key == ANTHROPIC_KEY and "anthropic-version" in request.headers
    body = request.json
    assert body["model"] == "claude-sonnet-5-5" and body["max_tokens"] == 512
    (message,) = body["messages"]
    image_block, text_block = message["content"]
    assert _image(image_block).tobytes() == image.convert("RGB").tobytes()
    assert text_block == {"type": "text", "text": "What is on the receipt?"}
    assert "tools" not in body
    assert out["text"] == anthropic_fake.answer
    assert out["usage"] == {"prompt_tokens": 1530, "completion_tokens": 17, "images": 0}


@pytest.mark.model  # compare_images' clip_similarity comes from the local tiny CLIP
async def test_compare_images_sends_both_images_in_one_message(
    hosted_client: Client, anthropic_fake: AnthropicFake
) -> None:
    first, second = photo("coffee", 32), photo("astronaut", 32)
    out = await call_ok(
        hosted_client,
        "compare_images",
        {
            "image_a": data_uri(first),
            "image_b": data_uri(second),
            "describe": True,
            "model": "claude-sonnet-5-5",
        },
    )
    (request,) = anthropic_fake.requests
    blocks = request.json["messages"][0]["content"]
    images = [_image(b) for b in blocks if b["type"] == "image"]
    assert [i.tobytes() for i in images] == [first.tobytes(), second.tobytes()]
    assert blocks[-1]["type"] == "text"
    assert out["narrative"] == anthropic_fake.answer and out["model"] == "claude-sonnet-5-5"


async def test_a_response_schema_is_answered_through_a_forced_tool_call(
    hosted_client: Client, anthropic_fake: AnthropicFake
) -> None:
    schema = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}
    anthropic_fake.tool_input = {"total": 12.75}
    out = await call_ok(
        hosted_client,
        "describe_image",
        {"image": data_uri(photo("coffee", 32)), "model": "claude-sonnet-5-5", "response_schema": schema},
    )
    body = anthropic_fake.requests[0].json
    assert body["tools"] == [
        {"name": "answer", "description": "Give the answer in this form.", "input_schema": schema}
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "answer"}
    assert out["data"] == {"total": 12.75}

    # A schema that is not an object travels wrapped, and comes back unwrapped.
    anthropic_fake.tool_input = {"value": ["cup", "saucer"]}
    listed = {"type": "array", "items": {"type": "string"}}
    out = await call_ok(
        hosted_client,
        "describe_image",
        {"image": data_uri(photo("coffee", 32)), "model": "claude-sonnet-5-5", "response_schema": listed},
    )
    wrapped = anthropic_fake.requests[1].json["tools"][0]["input_schema"]
    assert wrapped == {"type": "object", "properties": {"value": listed}, "required": ["value"]}
    assert out["data"] == ["cup", "saucer"]


async def test_detail_is_refused_by_capability_before_any_request(
    hosted_client: Client, anthropic_fake: AnthropicFake
) -> None:
    message = await call_error(
        hosted_client,
        "describe_image",
        {"image": data_uri(photo("coffee", 32)), "model": "claude-sonnet-5-5", "detail": "high"},
    )
    assert "model 'claude-sonnet-5-5' does not take detail='high'; models that do: gpt-4o" in message
    assert "Anthropic" not in message  # a message about a model names models, not providers
    assert anthropic_fake.requests == []


async def test_a_refusal_and_errors_reach_the_agent_in_plain_words(
    hosted_client: Client, anthropic_fake: AnthropicFake
) -> None:
    arguments = {"image": data_uri(photo("coffee", 32)), "model": "claude-sonnet-5-5"}
    anthropic_fake.stop_reason = "refusal"
    refused = await call_error(hosted_client, "describe_image", arguments)
    assert "Anthropic refused the request (model 'claude-sonnet-5-5' declined to answer)" in refused
    anthropic_fake.stop_reason = "end_turn"

    anthropic_fake.queue(anthropic_error(401, f"invalid x-api-key {ANTHROPIC_KEY}", "authentication_error"))
    rejected = await call_error(hosted_client, "describe_image", arguments)
    assert "Anthropic rejected the API key (HTTP 401)" in rejected and "ANTHROPIC_API_KEY" in rejected
    assert ANTHROPIC_KEY not in rejected

    overloaded = anthropic_error(529, "Overloaded", "overloaded_error", **{"retry-after": "0"})
    anthropic_fake.queue(overloaded, overloaded, overloaded)
    busy = await call_error(hosted_client, "describe_image", arguments)
    assert (
        "Anthropic is rate-limiting model 'claude-sonnet-5-5' (HTTP 429 after 2 retries): Overloaded" in busy
    )
    assert len(anthropic_fake.requests) == 2 + 3  # the refusal, the 401, then 1 try + 2 retries


async def test_prompt_rewriting_sends_the_system_prompt_apart(
    hosted_services: Services, anthropic_fake: AnthropicFake
) -> None:
    handle = hosted_services.hub.text_chat("claude-haiku-5-5")
    try:
        answer = await handle.complete("Rewrite prompts.", "a cat", max_tokens=50)
    finally:
        await hosted_services.hub.aclose()
    body = anthropic_fake.requests[0].json
    assert body["system"] == "Rewrite prompts." and body["max_tokens"] == 50
    assert body["messages"] == [{"role": "user", "content": "a cat"}]
    assert answer.text == anthropic_fake.answer and answer.usage is not None
    assert answer.usage.completion_tokens == 17


async def test_claude_calls_are_confirmed_like_other_paid_calls(
    hosted_services: Services, anthropic_fake: AnthropicFake
) -> None:
    questions: list[str] = []

    async def user(context: Any, params: Any) -> ElicitResult:
        questions.append(params.message)
        return ElicitResult(action="decline")

    server = hosted_services.config.server.model_copy(update={"spending": SpendingSettings(confirm="ask")})
    config = hosted_services.config.model_copy(update={"server": server})
    services = create_services(config, devices=cpu_only())
    async with Client(build_server(config, services), elicitation_callback=user) as client:
        error = await call_error(
            client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "claude-sonnet-5-5"}
        )
    assert "declined" in error and "nothing was spent" in error
    assert len(questions) == 1 and "claude-sonnet-5-5" in questions[0]
    assert anthropic_fake.requests == []
