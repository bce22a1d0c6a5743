"""Gemini models through the real ``google-genai`` SDK against a loopback fake of the API."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from mcp import Client
from PIL import Image

from multimodal_mcp.config import load_config
from multimodal_mcp.errors import ProviderError
from multimodal_mcp.server.app import build_server, create_services

from fake_providers import GEMINI_KEY, GeminiFake, OpenAIFake, Scripted, gemini_error, hosted_config
from helpers import call_error, call_ok, cpu_only, data_uri, photo

pytest.importorskip("google.genai")


def _inline_images(body: dict) -> list[Image.Image]:  # type: ignore[type-arg]
    parts = body["contents"][0]["parts"]
    return [
        Image.open(io.BytesIO(base64.urlsafe_b64decode(p["inlineData"]["data"]))).convert("RGB")
        for p in parts
        if "inlineData" in p
    ]


async def test_describe_image_sends_the_image_inline_with_the_schema_and_resolution(
    hosted_client: Client, gemini_fake: GeminiFake
) -> None:
    schema = {
        "type": "object",
        "properties": {"total": {"type": "number"}, "date": {"type": "string"}},
        "required": ["total", "date"],
    }
    gemini_fake.answer = '{"total": 12.3, "date": "2024-05-06"}'
    image = photo("coffee", 40)
    out = await call_ok(
        hosted_client,
        "describe_image",
        {
            "image": data_uri(image),
            "prompt": "Extract the total amount and date from this receipt.",
            "model": "gemini-2.5-flash",
            "detail": "low",
            "response_schema": schema,
        },
    )
    (request,) = gemini_fake.requests
    assert request.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert request.headers["x-goog-api-key"] == GEMINI_KEY
    parts = request.json["contents"][0]["parts"]
    assert parts[0] == {"text": "Extract the total amount and date from this receipt."}
    assert [img.tobytes() for img in _inline_images(request.json)] == [image.convert("RGB").tobytes()]
    config = request.json["generationConfig"]
    assert config["responseMimeType"] == "application/json" and config["responseJsonSchema"] == schema
    assert config["mediaResolution"] == "MEDIA_RESOLUTION_LOW" and config["maxOutputTokens"] == 512
    assert out["data"] == {"total": 12.3, "date": "2024-05-06"}
    assert out["usage"] == {"prompt_tokens": 530, "completion_tokens": 11, "images": 0}


@pytest.mark.model  # clip_similarity comes from the local tiny CLIP
async def test_compare_images_sends_both_images_in_one_request(
    hosted_client: Client, gemini_fake: GeminiFake
) -> None:
    a, b = photo("chelsea", 48), photo("coffee", 48)
    out = await call_ok(
        hosted_client,
        "compare_images",
        {"image_a": data_uri(a), "image_b": data_uri(b), "describe": True, "model": "gemini-2.5-flash"},
    )
    (request,) = gemini_fake.requests
    assert (
        "Compare these two images and describe what changed"
        in request.json["contents"][0]["parts"][0]["text"]
    )
    sent = _inline_images(request.json)
    assert [img.tobytes() for img in sent] == [a.convert("RGB").tobytes(), b.convert("RGB").tobytes()]
    assert out["narrative"] == "In the second image the cat is gone." and out["model"] == "gemini-2.5-flash"
    assert out["usage"]["completion_tokens"] == 11


async def test_the_image_model_generates_with_an_image_modality_one_request_per_image(
    hosted_client: Client, gemini_fake: GeminiFake
) -> None:
    out = await call_ok(
        hosted_client,
        "generate_image",
        {
            "prompt": "a lighthouse",
            "model": "gemini-2.5-flash-image",
            "width": 1344,
            "height": 768,
            "num_images": 2,
        },
    )
    assert len(gemini_fake.requests) == 2
    for request in gemini_fake.requests:
        assert request.path.endswith("/models/gemini-2.5-flash-image:generateContent")
        assert request.json["contents"][0]["parts"] == [{"text": "a lighthouse"}]
        assert request.json["generationConfig"]["responseModalities"] == ["IMAGE"]
        assert request.json["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9"}
    assert [(i["width"], i["height"]) for i in out["images"]] == [(1344, 768)] * 2
    assert out["usage"] == {"prompt_tokens": 14, "completion_tokens": 2580, "images": 2}
    message = await call_error(
        hosted_client, "generate_image", {"prompt": "x", "model": "gemini-2.5-flash-image", "width": 512}
    )
    assert "1344x768 (16:9)" in message and "not 512x?" in message


async def test_a_rate_limit_is_retried_after_the_delay_the_api_asks_for(
    hosted_client: Client, gemini_fake: GeminiFake
) -> None:
    gemini_fake.queue(
        gemini_error(429, "Resource has been exhausted", "RESOURCE_EXHAUSTED", **{"retry-after": "0.05"})
    )
    gemini_fake.queue(gemini_error(503, "The model is overloaded", "UNAVAILABLE"))
    out = await call_ok(
        hosted_client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gemini-2.5-flash"}
    )
    assert out["text"] == "In the second image the cat is gone."
    assert len(gemini_fake.requests) == 3


async def test_refusals_reach_the_agent_in_plain_words(
    hosted_client: Client, gemini_fake: GeminiFake
) -> None:
    gemini_fake.queue(
        Scripted(body={"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {}})
    )
    message = await call_error(
        hosted_client, "generate_image", {"prompt": "x", "model": "gemini-2.5-flash-image"}
    )
    assert "Gemini refused the request: the prompt was blocked (PROHIBITED_CONTENT)" in message
    gemini_fake.queue(
        Scripted(
            body={"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "IMAGE_SAFETY"}]}
        )
    )
    message = await call_error(
        hosted_client, "generate_image", {"prompt": "x", "model": "gemini-2.5-flash-image"}
    )
    assert "Gemini refused the request: the answer was stopped (IMAGE_SAFETY)" in message
    gemini_fake.queue(gemini_error(400, f"API key not valid: {GEMINI_KEY}", "INVALID_ARGUMENT"))
    message = await call_error(
        hosted_client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gemini-2.5-flash"}
    )
    assert (
        "Gemini rejected the API key" in message and "GEMINI_API_KEY" in message and GEMINI_KEY not in message
    )


async def test_malformed_responses_are_clear_errors(hosted_client: Client, gemini_fake: GeminiFake) -> None:
    gemini_fake.queue(Scripted(body={"candidates": []}))
    message = await call_error(
        hosted_client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gemini-2.5-flash"}
    )
    assert "Gemini sent a response without candidates" in message
    gemini_fake.queue(
        Scripted(
            body={
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": "I drew nothing."}]},
                        "finishReason": "STOP",
                    }
                ]
            }
        )
    )
    message = await call_error(
        hosted_client, "generate_image", {"prompt": "x", "model": "gemini-2.5-flash-image"}
    )
    assert "Gemini returned no image for model 'gemini-2.5-flash-image'; it said: I drew nothing." in message
    gemini_fake.queue(Scripted(body=b"not json at all"))
    message = await call_error(
        hosted_client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gemini-2.5-flash"}
    )
    assert (
        "Gemini sent a response that does not match the API's format for model 'gemini-2.5-flash'" in message
    )


async def test_a_timeout_is_a_clear_error_and_the_server_keeps_answering(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path, openai_fake: OpenAIFake, gemini_fake: GeminiFake
) -> None:
    config = hosted_config(
        tmp_path,
        tiny_dir,
        allowed_root,
        openai_url=f"{openai_fake.url}/v1",
        gemini_url=f"{gemini_fake.url}/",
        gemini={"timeout_seconds": 0.5, "max_retries": 0},
    )
    async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
        gemini_fake.queue(Scripted(delay=30))
        image = data_uri(photo("coffee", 32))
        message = await call_error(client, "describe_image", {"image": image, "model": "gemini-2.5-flash"})
        assert "Gemini did not answer model 'gemini-2.5-flash' within 0.5 s (tried 1 time(s))" in message
        out = await call_ok(client, "describe_image", {"image": image, "model": "gemini-2.5-flash"})
        assert out["text"] == "In the second image the cat is gone."


async def test_a_server_that_is_not_there_is_a_clear_error_naming_where_requests_went(tmp_path: Path) -> None:
    closed = "http://127.0.0.1:9/"  # the discard port: nothing listens there
    path = tmp_path / "config.toml"
    path.write_text(
        f'[hosted.gemini]\nbase_url = "{closed}"\nmax_retries = 0\n'
        '[models.flash]\ntask = "vlm"\nbackend = "gemini"\nsource = "gemini-2.5-flash"\n'
    )
    config = load_config(
        profile="tiny", config_file=path, cache_dir=tmp_path, home=tmp_path, environ={"GEMINI_API_KEY": "k"}
    )
    services = create_services(config, devices=cpu_only())
    try:
        with pytest.raises(ProviderError) as info:
            await services.hub.vision_chat("flash").answer([photo("coffee", 16)], "what?", max_tokens=9)
    finally:
        await services.hub.aclose()
    assert str(info.value) == (
        f"could not reach Gemini at {closed} for model 'flash' (tried 1 time(s)); check the network or "
        "hosted.gemini.base_url"
    )


async def test_chat_models_complete_text_only_prompts_with_a_system_instruction(
    hosted_client: Client,
    gemini_fake: GeminiFake,
    hosted_services,  # type: ignore[no-untyped-def]
) -> None:
    gemini_fake.answer = "a fox at dawn"
    answer = await hosted_services.hub.text_chat("gemini-2.5-flash").complete(
        "You rewrite prompts.", "fox", max_tokens=40
    )
    assert (answer.text, answer.tokens) == ("a fox at dawn", 11)
    body = gemini_fake.requests[0].json
    assert body["systemInstruction"]["parts"] == [{"text": "You rewrite prompts."}]
    assert (
        body["contents"][0]["parts"] == [{"text": "fox"}]
        and body["generationConfig"]["maxOutputTokens"] == 40
    )
