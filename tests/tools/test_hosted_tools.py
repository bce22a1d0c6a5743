"""Every tool's hosted variant end to end through the in-memory MCP client, ids chaining across
providers; and what the hosted-only arguments do on local models."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import jsonschema
import pytest
from mcp import Client
from mcp.types import ElicitResult
from PIL import Image

from multimodal_mcp.config import Config, SpendingSettings
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.tools.common import Services

from fake_providers import GeminiFake, OpenAIFake
from helpers import call_error, call_ok, cpu_only, data_uri, open_png, photo, read_png, text_of

pytest.importorskip("openai")
pytest.importorskip("google.genai")


@pytest.mark.model  # clip_similarity comes from the local tiny CLIP
async def test_generate_on_openai_describe_on_gemini_compare_on_openai_chain_by_id(
    hosted_client: Client, openai_fake: OpenAIFake, gemini_fake: GeminiFake
) -> None:
    tools = {t.name: t for t in (await hosted_client.list_tools()).tools}

    # 1. Generate on OpenAI and on Gemini
    made = await hosted_client.call_tool(
        "generate_image", {"prompt": "a red bicycle", "model": "gpt-image-1"}
    )
    assert not made.is_error, text_of(made)
    jsonschema.validate(made.structured_content, tools["generate_image"].output_schema)
    first = made.structured_content["images"][0]  # type: ignore[index]
    other = (
        await call_ok(
            hosted_client, "generate_image", {"prompt": "a blue bicycle", "model": "gemini-2.5-flash-image"}
        )
    )["images"][0]
    stored = open_png(await read_png(hosted_client, first["uri"])).convert("RGB")

    # 2. Describe the OpenAI image on Gemini, by id
    described = await hosted_client.call_tool(
        "describe_image", {"image": first["uri"], "model": "gemini-2.5-flash", "prompt": "What is this?"}
    )
    assert not described.is_error, text_of(described)
    jsonschema.validate(described.structured_content, tools["describe_image"].output_schema)
    assert described.structured_content["image"]["id"] == first["id"]  # type: ignore[index]
    parts = gemini_fake.requests[-1].json["contents"][0]["parts"]
    sent = Image.open(io.BytesIO(base64.urlsafe_b64decode(parts[1]["inlineData"]["data"]))).convert("RGB")
    assert sent.tobytes() == stored.tobytes()

    # 3. Compare the two on OpenAI's vision model: both images in one request, in order
    compared = await hosted_client.call_tool(
        "compare_images",
        {
            "image_a": first["uri"],
            "image_b": other["uri"],
            "describe": True,
            "model": "gpt-4o",
            "detail": "low",
        },
    )
    assert not compared.is_error, text_of(compared)
    jsonschema.validate(compared.structured_content, tools["compare_images"].output_schema)
    out = compared.structured_content
    assert out["narrative"] == "A cat sits on a red sofa." and out["model"] == "gpt-4o"  # type: ignore[index]
    assert out["image_a"]["id"] == first["id"] and out["image_b"]["id"] == other["id"]  # type: ignore[index]
    content = openai_fake.requests[-1].json["messages"][0]["content"]
    assert [c["type"] for c in content] == ["text", "image_url", "image_url"]
    assert all(c["image_url"]["detail"] == "low" for c in content[1:])
    header, _, payload = content[1]["image_url"]["url"].partition(",")
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB").tobytes() == stored.tobytes()

    # 4. list_models says which hosted keys are set, never the key
    listed = await hosted_client.call_tool("list_models", {})
    models = {m["name"]: m for m in listed.structured_content["models"]}  # type: ignore[index]
    assert models["gpt-image-1"]["hosted"] and models["gpt-image-1"]["api_key_set"] is True
    assert models["gemini-2.5-flash"]["api_key_env"] == "GEMINI_API_KEY"
    assert models["tiny-sd15"]["hosted"] is False and models["tiny-sd15"]["api_key_set"] is None
    assert "hosted (openai, key set)" in text_of(listed)
    assert "sk-test" not in str(listed.structured_content) and "gm-test" not in text_of(listed)


async def test_arguments_a_local_model_does_not_take_are_errors_written_from_its_capabilities(
    client: Client,
) -> None:
    image = data_uri(photo("coffee", 32))
    message = await call_error(client, "describe_image", {"image": image, "detail": "high"})
    # The tiny profile has no model that takes detail, and the message names no provider.
    assert "model 'tiny-vlm' does not take detail='high'; no configured model does" in message
    assert "OpenAI" not in message and "Gemini" not in message
    message = await call_error(
        client, "compare_images", {"image_a": image, "image_b": image, "detail": "low"}
    )
    assert "pass describe=True" in message
    message = await call_error(
        client, "compare_images", {"image_a": image, "image_b": image, "describe": True, "detail": "low"}
    )
    assert "model 'tiny-vlm' does not take detail='low'" in message


async def test_a_local_vlm_is_prompted_for_json_and_its_answer_is_checked(client: Client) -> None:
    # tiny-vlm's random weights cannot write JSON: the error says so without dumping its answer
    message = await call_error(
        client,
        "describe_image",
        {
            "image": data_uri(photo("coffee", 32)),
            "response_schema": {"type": "object", "properties": {"total": {"type": "number"}}},
        },
    )
    assert "model 'tiny-vlm'" in message and "response_schema" in message
    assert len(message) < 600


async def test_an_untrusted_schema_is_checked_before_any_model_runs(client: Client) -> None:
    image = data_uri(photo("coffee", 32))
    message = await call_error(
        client, "describe_image", {"image": image, "response_schema": {"$ref": "https://example.com/s.json"}}
    )
    assert "only use local references" in message
    message = await call_error(
        client, "describe_image", {"image": image, "response_schema": {"type": "nope"}}
    )
    assert "not a valid JSON Schema" in message


def _rewriting_on(config: Config, text_model: str, **spending: str) -> Config:
    """``config`` with a hosted text model rewriting prompts (and spending settings, if given)."""
    server = config.server
    if spending:
        server = server.model_copy(update={"spending": SpendingSettings(**spending)})  # type: ignore[arg-type]
    return config.model_copy(
        update={"defaults": {**config.defaults, "prompt_rewrite": text_model}, "server": server}
    )


@pytest.mark.model  # verified with the local tiny CLIP
async def test_a_hosted_generation_rewrites_with_a_hosted_text_model_and_verifies_with_local_clip(
    hosted_services: Services, openai_fake: OpenAIFake
) -> None:
    rewritten = "A red bicycle leaning on a brick wall at golden hour, photorealistic, 35 mm"
    openai_fake.chat_answer = rewritten
    config = _rewriting_on(hosted_services.config, "gpt-4o-mini")
    services = create_services(config, devices=cpu_only())
    async with Client(build_server(config, services)) as client:
        out = await call_ok(
            client,
            "generate_image",
            {
                "prompt": "a red bicycle",
                "model": "gpt-image-1",
                "enhance_prompt": True,
                "verify_labels": ["a bicycle"],
            },
        )
        png = await read_png(client, out["images"][0]["uri"])

    # The text model was asked first, then the image model got the rewritten prompt.
    chat, image = openai_fake.requests[-2], openai_fake.requests[-1]
    assert chat.path.endswith("/chat/completions") and chat.json["model"] == "gpt-4o-mini"
    assert [m["role"] for m in chat.json["messages"]] == ["system", "user"]
    assert "a red bicycle" in chat.json["messages"][1]["content"]
    assert image.path.endswith("/images/generations") and image.json["prompt"] == rewritten
    rewrite = out["prompt_rewrite"]
    assert (rewrite["original"], rewrite["prompt"], rewrite["model"]) == (
        "a red bicycle",
        rewritten,
        "gpt-4o-mini",
    )
    assert out["parameters"]["prompt"] == rewritten

    # Verified with the local CLIP model, per image, and stored with it.
    (check,) = out["verification"]
    assert check["image_id"] == out["images"][0]["id"] and set(check["label_scores"]) == {"a bicycle"}
    embedded = json.loads(Image.open(io.BytesIO(png)).info["multimodal-mcp"])
    assert embedded["parameters"]["original_prompt"] == "a red bicycle"
    assert embedded["parameters"]["verification"]["prompt_score"] == check["prompt_score"]


async def test_a_declined_hosted_call_sends_nothing_to_the_provider(
    hosted_services: Services, openai_fake: OpenAIFake
) -> None:
    questions: list[str] = []

    async def user(context: Any, params: Any) -> ElicitResult:
        questions.append(params.message)
        return ElicitResult(action="decline")

    config = _rewriting_on(hosted_services.config, "gpt-4o-mini", confirm="ask")
    services = create_services(config, devices=cpu_only())
    async with Client(build_server(config, services), elicitation_callback=user) as client:
        for tool, arguments in (
            ("generate_image", {"prompt": "a red bicycle", "model": "gpt-image-1", "enhance_prompt": True}),
            ("describe_image", {"image": data_uri(photo()), "model": "gpt-4o"}),
        ):
            error = await call_error(client, tool, arguments)
            assert "declined" in error and "nothing was spent" in error
    assert openai_fake.requests == []
    assert "gpt-image-1" in questions[0] and "gpt-4o" in questions[-1]


async def test_a_fixed_size_model_takes_its_configured_default_size_and_edits_let_the_provider_choose(
    tmp_path, tiny_dir, allowed_root, openai_fake: OpenAIFake, gemini_fake: GeminiFake
) -> None:  # type: ignore[no-untyped-def]
    from fake_providers import hosted_config

    config = hosted_config(
        tmp_path,
        tiny_dir,
        allowed_root,
        openai_url=f"{openai_fake.url}/v1",
        gemini_url=f"{gemini_fake.url}/",
        extra_toml='[models.gpt-image-1-hd]\ntask = "text_to_image"\nbackend = "openai"\n'
        'source = "gpt-image-1"\ndefaults = { width = 1536, height = 1024 }\n',
    )
    async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
        await call_ok(client, "generate_image", {"prompt": "a wide view", "model": "gpt-image-1-hd"})
        await call_ok(
            client,
            "controlled_generate",
            {
                "prompt": "make it night",
                "model": "gpt-image-1-hd",
                "init_image": data_uri(photo("coffee", 32)),
            },
        )
    generated, edited = openai_fake.requests
    assert generated.json["size"] == "1536x1024"  # the model's configured default
    assert edited.form["size"][0][1] == b"auto"  # an edit without width/height: the provider's choice


async def test_open_world_hints_say_which_tools_may_reach_a_hosted_model(hosted_client: Client) -> None:
    tools = {t.name: t for t in (await hosted_client.list_tools()).tools}
    reaching = {name for name, t in tools.items() if t.annotations and t.annotations.open_world_hint}
    # The hosted profile has hosted image, vision and text models, and no hosted CLIP.
    assert reaching == {"generate_image", "controlled_generate", "describe_image", "compare_images"}


async def test_a_hosted_default_vlm_opens_generation_to_the_world_for_thorough_verification(
    config: Config,
) -> None:
    from multimodal_mcp.config import ModelSpec

    hosted_vlm = ModelSpec.model_validate({"task": "vlm", "backend": "openai", "source": "gpt-4o"})
    models = {**config.models, "gpt-4o": hosted_vlm}
    opened = config.model_copy(update={"models": models, "defaults": {**config.defaults, "vlm": "gpt-4o"}})
    async with Client(build_server(opened, create_services(opened, devices=cpu_only()))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    reaching = {name for name, t in tools.items() if t.annotations and t.annotations.open_world_hint}
    # verify="thorough" asks the default VLM; describe_image and compare_images may pick it anyway.
    assert reaching == {"generate_image", "controlled_generate", "describe_image", "compare_images"}


async def test_fetching_urls_opens_every_tool_that_takes_images_to_the_world(config: Config) -> None:
    urls = config.server.model_copy(update={"urls": config.server.urls.model_copy(update={"enabled": True})})
    opened = config.model_copy(update={"server": urls})
    async with Client(build_server(opened, create_services(opened, devices=cpu_only()))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    reaching = {name for name, t in tools.items() if t.annotations and t.annotations.open_world_hint}
    assert reaching == {
        "controlled_generate",
        "clip_classify",
        "describe_image",
        "compare_images",
    }
