"""OpenAI models through the real ``openai`` SDK against a loopback fake of the API."""

from __future__ import annotations

import base64
import io

import anyio
import anyio.to_thread
import pytest
from mcp import Client
from PIL import Image

from multimodal_mcp.imaging.codec import png_text
from multimodal_mcp.tools.common import Services

from fake_providers import OPENAI_KEY, OpenAIFake, Scripted, openai_error
from helpers import call_error, call_ok, data_uri, open_png, photo, read_png, text_of

pytest.importorskip("openai")


def _decode_data_uri(uri: str) -> Image.Image:
    header, _, payload = uri.partition(",")
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")


async def test_gpt_image_1_is_sent_the_size_quality_and_count_and_its_images_are_stored(
    hosted_client: Client, openai_fake: OpenAIFake
) -> None:
    out = await call_ok(
        hosted_client,
        "generate_image",
        {
            "prompt": "an isometric bookshop",
            "model": "gpt-image-1",
            "width": 1536,
            "height": 1024,
            "quality": "high",
            "num_images": 2,
        },
    )
    (request,) = openai_fake.requests
    assert request.path == "/v1/images/generations"
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert request.json == {
        "model": "gpt-image-1",
        "prompt": "an isometric bookshop",
        "n": 2,
        "size": "1536x1024",
        "quality": "high",
    }
    assert [(img["width"], img["height"], img["seed"]) for img in out["images"]] == [(1536, 1024, None)] * 2
    assert out["seed"] is None and out["model"] == "gpt-image-1"
    assert out["provider_parameters"] == {"size": "1536x1024", "quality": "high", "n": 2}
    assert out["parameters"]["steps"] is None
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 8320, "images": 2}
    png = await read_png(hosted_client, out["images"][0]["uri"])
    assert open_png(png).size == (1536, 1024)
    assert "gpt-image-1" in png_text(png)["parameters"] and "1536x1024" in png_text(png)["parameters"]


async def test_dall_e_3_returns_its_revised_prompt_and_refuses_what_it_cannot_do(
    hosted_client: Client, openai_fake: OpenAIFake
) -> None:
    out = await call_ok(
        hosted_client, "generate_image", {"prompt": "a cozy bookshop", "model": "dall-e-3", "quality": "hd"}
    )
    assert openai_fake.requests[0].json == {
        "model": "dall-e-3",
        "prompt": "a cozy bookshop",
        "n": 1,
        "size": "1024x1024",
        "quality": "hd",
        "response_format": "b64_json",
    }
    assert out["images"][0]["revised_prompt"].startswith("A detailed isometric illustration")

    def gen(**arguments: object) -> dict[str, object]:
        return {"prompt": "x", "model": "dall-e-3", **arguments}

    one = await call_error(hosted_client, "generate_image", gen(num_images=2))
    assert "model 'dall-e-3' does not take num_images=2 (it takes num_images: at most 1)" in one
    assert "models that do: " in one and "gpt-image-2" in one
    size_error = await call_error(hosted_client, "generate_image", gen(width=512, height=512))
    assert "1024x1024, 1792x1024, 1024x1792 only, not 512x512" in size_error
    assert "does not take quality='low' (it takes quality: standard, hd)" in await call_error(
        hosted_client, "generate_image", gen(quality="low")
    )
    seeded = await call_error(hosted_client, "generate_image", gen(seed=3, steps=20))
    assert "model 'dall-e-3' does not take `steps`; models that do: tiny-sd15" in seeded
    assert "It does not take `seed` either." in seeded
    local = await call_error(hosted_client, "generate_image", {"prompt": "x", "quality": "hd"})
    assert "model 'tiny-sd15' does not take quality='hd'; models that do: dall-e-3" in local
    assert len(openai_fake.requests) == 1  # refused before any request


async def test_gpt_image_1_edits_with_a_reference_image_and_a_mask(
    hosted_client: Client, openai_fake: OpenAIFake
) -> None:
    init = photo("astronaut", 64)
    mask = Image.new("RGB", (64, 64), "black")
    mask.paste((255, 255, 255), (16, 16, 48, 48))
    out = await call_ok(
        hosted_client,
        "controlled_generate",
        {
            "prompt": "a red balloon",
            "model": "gpt-image-1",
            "init_image": data_uri(init),
            "mask_image": data_uri(mask),
            "reference_image": data_uri(photo("coffee", 64)),
        },
    )
    (request,) = openai_fake.requests
    assert request.path == "/v1/images/edits"
    form = request.form
    assert form["model"][0][1] == b"gpt-image-1" and form["prompt"][0][1] == b"a red balloon"
    assert form["size"][0][1] == b"auto"
    images = [Image.open(io.BytesIO(data)) for _, data in form["image[]"]]
    assert [img.size for img in images] == [(64, 64), (64, 64)]
    assert images[0].convert("RGB").tobytes() == init.convert("RGB").tobytes()
    sent_mask = Image.open(io.BytesIO(form["mask"][0][1]))
    assert sent_mask.mode == "RGBA"
    assert sent_mask.getpixel((32, 32))[3] == 0 and sent_mask.getpixel((2, 2))[3] == 255  # transparent = edit
    assert out["mode"] == "inpaint+reference"
    assert out["init_image"] and out["mask_image"] and out["reference_image"]
    assert out["usage"]["images"] == 1


async def test_controlnet_on_a_hosted_model_names_what_it_supports(
    hosted_client: Client, openai_fake: OpenAIFake
) -> None:
    image = data_uri(photo("astronaut", 64))
    message = await call_error(
        hosted_client, "controlled_generate", {"prompt": "x", "model": "gpt-image-1", "control_image": image}
    )
    assert "model 'gpt-image-1' does not take `control_image`; models that do: tiny-sd15" in message
    assert "OpenAI" not in message  # about the model, not its provider
    message = await call_error(
        hosted_client,
        "controlled_generate",
        {"prompt": "x", "model": "gpt-image-1", "init_image": image, "strength": 0.3},
    )
    assert "model 'gpt-image-1' does not take `strength`; models that do: tiny-sd15" in message
    cannot = await call_error(
        hosted_client, "controlled_generate", {"prompt": "x", "model": "dall-e-3", "init_image": image}
    )
    assert (
        "model 'dall-e-3' does not take `init_image`; models that do:" in cannot and "gpt-image-2" in cannot
    )
    assert openai_fake.requests == []


async def test_describe_image_sends_a_data_uri_with_detail_and_gets_validated_json(
    hosted_client: Client, openai_fake: OpenAIFake
) -> None:
    schema = {
        "type": "object",
        "properties": {"total": {"type": "number"}, "date": {"type": "string"}},
        "required": ["total", "date"],
    }
    openai_fake.chat_answer = '{"total": 42.5, "date": "2024-03-01"}'
    image = photo("coffee", 48)
    out = await call_ok(
        hosted_client,
        "describe_image",
        {
            "image": data_uri(image),
            "prompt": "Extract the total amount and date from this receipt.",
            "model": "gpt-4o",
            "detail": "high",
            "response_schema": schema,
        },
    )
    (request,) = openai_fake.requests
    body = request.json
    assert body["model"] == "gpt-4o" and body["max_completion_tokens"] == 512
    text_part, image_part = body["messages"][0]["content"]
    assert text_part == {"type": "text", "text": "Extract the total amount and date from this receipt."}
    assert image_part["type"] == "image_url" and image_part["image_url"]["detail"] == "high"
    assert _decode_data_uri(image_part["image_url"]["url"]).tobytes() == image.convert("RGB").tobytes()
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": False},
    }
    assert out["data"] == {"total": 42.5, "date": "2024-03-01"}
    assert out["usage"] == {"prompt_tokens": 850, "completion_tokens": 9, "images": 0}
    assert out["tokens"] == 9

    openai_fake.chat_answer = '{"total": "lots"}'
    message = await call_error(
        hosted_client,
        "describe_image",
        {"image": data_uri(image), "model": "gpt-4o", "response_schema": schema},
    )
    assert "does not match response_schema" in message and "'date' is a required property" in message


async def test_a_rate_limit_is_retried_and_then_succeeds(
    hosted_client: Client, openai_fake: OpenAIFake
) -> None:
    openai_fake.queue(
        openai_error(429, "Rate limit reached", "rate_limit_exceeded", **{"retry-after-ms": "20"})
    )
    out = await call_ok(
        hosted_client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gpt-4o"}
    )
    assert out["text"] == "A cat sits on a red sofa."
    assert len(openai_fake.requests) == 2


async def test_rate_limits_past_the_retries_say_busy(hosted_client: Client, openai_fake: OpenAIFake) -> None:
    limited = openai_error(
        429, "Rate limit reached for gpt-4o", "rate_limit_exceeded", **{"retry-after-ms": "5"}
    )
    openai_fake.queue(limited, limited, limited)
    message = await call_error(
        hosted_client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gpt-4o"}
    )
    assert "OpenAI is rate-limiting model 'gpt-4o' (HTTP 429 after 2 retries): Rate limit reached" in message
    assert len(openai_fake.requests) == 3


async def test_a_content_policy_refusal_reaches_the_agent_in_plain_words(
    hosted_client: Client, openai_fake: OpenAIFake
) -> None:
    openai_fake.queue(
        openai_error(
            400,
            "Your request was rejected as a result of our safety system.",
            "content_policy_violation",
        )
    )
    message = await call_error(hosted_client, "generate_image", {"prompt": "x", "model": "gpt-image-1"})
    assert (
        "OpenAI refused the request: Your request was rejected as a result of our safety system." in message
    )
    assert OPENAI_KEY not in message and "Traceback" not in message

    openai_fake.queue(
        Scripted(
            body={
                "id": "c",
                "object": "chat.completion",
                "created": 1,
                "model": "gpt-4o",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": None,
                            "refusal": "I can't help with that.",
                        },
                        "finish_reason": "stop",
                    }
                ],
            }
        )
    )
    message = await call_error(
        hosted_client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gpt-4o"}
    )
    assert "OpenAI refused the request: I can't help with that." in message


async def test_an_auth_error_never_echoes_the_key(hosted_client: Client, openai_fake: OpenAIFake) -> None:
    openai_fake.queue(openai_error(401, f"Incorrect API key provided: {OPENAI_KEY}.", "invalid_api_key"))
    message = await call_error(hosted_client, "generate_image", {"prompt": "x", "model": "gpt-image-1"})
    assert "OpenAI rejected the API key (HTTP 401)" in message and "OPENAI_API_KEY" in message
    assert OPENAI_KEY not in message


async def test_a_malformed_response_is_a_clear_error(hosted_client: Client, openai_fake: OpenAIFake) -> None:
    openai_fake.queue(Scripted(body={"created": 1, "data": []}))
    message = await call_error(hosted_client, "generate_image", {"prompt": "x", "model": "gpt-image-1"})
    assert "OpenAI sent no images for model 'gpt-image-1'" in message
    openai_fake.queue(Scripted(body={"created": 1, "data": [{"b64_json": "bm90IGFuIGltYWdl"}]}))
    message = await call_error(hosted_client, "generate_image", {"prompt": "x", "model": "gpt-image-1"})
    assert "image data that is not a readable image" in message
    openai_fake.queue(Scripted(body=b"<html>502 Bad Gateway</html>"))
    message = await call_error(hosted_client, "generate_image", {"prompt": "x", "model": "gpt-image-1"})
    assert "OpenAI sent a response that does not match the API's format" in message
    openai_fake.queue(Scripted(body={"id": "c", "choices": []}))
    message = await call_error(
        hosted_client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gpt-4o"}
    )
    assert "OpenAI sent a response without choices" in message


async def test_a_timeout_is_a_clear_error_and_the_server_keeps_answering(
    tmp_path,
    tiny_dir,
    allowed_root,
    openai_fake: OpenAIFake,
    gemini_fake,  # type: ignore[no-untyped-def]
) -> None:
    from multimodal_mcp.server.app import build_server, create_services

    from fake_providers import hosted_config
    from helpers import cpu_only

    config = hosted_config(
        tmp_path,
        tiny_dir,
        allowed_root,
        openai_url=f"{openai_fake.url}/v1",
        gemini_url=f"{gemini_fake.url}/",
        openai={"timeout_seconds": 0.5, "max_retries": 0},
    )
    services = create_services(config, devices=cpu_only())
    async with Client(build_server(config, services)) as client:
        openai_fake.queue(Scripted(delay=30))
        image = data_uri(photo("coffee", 32))
        message = await call_error(client, "describe_image", {"image": image, "model": "gpt-4o"})
        assert "OpenAI did not answer model 'gpt-4o' within 0.5 s (tried 1 time(s))" in message
        out = await call_ok(client, "describe_image", {"image": image, "model": "gpt-4o"})
        assert out["text"] == "A cat sits on a red sofa."


async def test_a_missing_key_names_the_variable_to_set(
    tmp_path,
    tiny_dir,
    allowed_root,
    openai_fake: OpenAIFake,
    gemini_fake,  # type: ignore[no-untyped-def]
) -> None:
    from multimodal_mcp.server.app import build_server, create_services

    from fake_providers import hosted_config
    from helpers import cpu_only

    config = hosted_config(
        tmp_path, tiny_dir, allowed_root, openai_url=openai_fake.url, gemini_url=gemini_fake.url, environ={}
    )
    async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
        message = await call_error(client, "generate_image", {"prompt": "x", "model": "gpt-image-1"})
        assert "model 'gpt-image-1' needs an OpenAI API key: set OPENAI_API_KEY" in message
        message = await call_error(
            client, "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gemini-2.5-flash"}
        )
        assert "needs a Gemini API key: set GEMINI_API_KEY or GOOGLE_API_KEY" in message
        listed = await client.call_tool("list_models", {})
        gpt = next(m for m in listed.structured_content["models"] if m["name"] == "gpt-4o")  # type: ignore[index]
        assert gpt["hosted"] and gpt["api_key_set"] is False and gpt["api_key_env"] == "OPENAI_API_KEY"
        assert "no key: set OPENAI_API_KEY" in text_of(listed)
    assert openai_fake.requests == []


async def test_chat_models_complete_text_only_prompts(
    hosted_services: Services, openai_fake: OpenAIFake
) -> None:
    openai_fake.chat_answer = "a watercolor fox in morning fog, soft light"
    chat = hosted_services.hub.text_chat("gpt-4o")
    answer = await chat.complete("You rewrite prompts.", "fox", max_tokens=60)
    assert (answer.text, answer.tokens) == ("a watercolor fox in morning fog, soft light", 9)
    assert openai_fake.requests[0].json["messages"] == [
        {"role": "system", "content": "You rewrite prompts."},
        {"role": "user", "content": "fox"},
    ]
    assert openai_fake.requests[0].json["max_completion_tokens"] == 60
    await hosted_services.hub.aclose()


@pytest.mark.model  # runs a local tiny model beside the hosted one
async def test_a_slow_hosted_call_does_not_hold_up_local_models(
    hosted_client: Client, openai_fake: OpenAIFake
) -> None:
    openai_fake.queue(Scripted(delay=60))  # held until released below
    hosted: dict[str, object] = {}

    async def slow_hosted() -> None:
        hosted["result"] = await hosted_client.call_tool(
            "describe_image", {"image": data_uri(photo("coffee", 32)), "model": "gpt-4o"}
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_hosted)
        assert await anyio.to_thread.run_sync(openai_fake.arrived.wait, 10)  # the request is at the fake
        local = await call_ok(
            hosted_client, "describe_image", {"image": data_uri(photo("coffee", 32)), "max_tokens": 2}
        )
        assert local["model"] == "tiny-vlm"
        assert "result" not in hosted  # the hosted call is still waiting for the provider
        openai_fake.release.set()
    assert not hosted["result"].is_error  # type: ignore[attr-defined]


async def test_requests_beyond_the_concurrency_limit_wait_and_clients_close_at_shutdown(
    tmp_path,
    tiny_dir,
    allowed_root,
    openai_fake: OpenAIFake,
    gemini_fake,  # type: ignore[no-untyped-def]
) -> None:
    from multimodal_mcp.server.app import build_server, create_services

    from fake_providers import hosted_config
    from helpers import cpu_only

    config = hosted_config(
        tmp_path,
        tiny_dir,
        allowed_root,
        openai_url=f"{openai_fake.url}/v1",
        gemini_url=f"{gemini_fake.url}/",
        openai={"max_concurrency": 1},
    )
    services = create_services(config, devices=cpu_only())
    image = data_uri(photo("coffee", 32))
    openai_fake.queue(Scripted(delay=60))  # the first request is held until released
    results = []

    async def describe() -> None:
        results.append(await call_ok(client, "describe_image", {"image": image, "model": "gpt-4o"}))

    async with Client(build_server(config, services)) as client, anyio.create_task_group() as tg:
        tg.start_soon(describe)
        tg.start_soon(describe)
        assert await anyio.to_thread.run_sync(openai_fake.arrived.wait, 10)
        await anyio.sleep(0.3)  # time in which a second request could have been sent (it must not be)
        assert len(openai_fake.requests) == 1
        openai_fake.release.set()
    assert len(results) == 2 and len(openai_fake.requests) == 2
    assert services.hub.connections.open_clients() == []  # closed and dropped when the server stopped


async def test_a_missing_sdk_names_the_extra_to_install(
    hosted_services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from multimodal_mcp.errors import BackendError

    monkeypatch.setitem(sys.modules, "openai", None)  # as if the package were not installed
    with pytest.raises(
        BackendError, match=r"needs the 'openai' package: pip install 'multimodal-mcp\[openai\]'"
    ):
        await hosted_services.hub.text_chat("gpt-4o").complete("s", "p", max_tokens=5)


async def test_p_yes_comes_from_the_first_tokens_top_logprobs_of_yes_and_no(
    hosted_services: Services, openai_fake: OpenAIFake
) -> None:
    import math

    from multimodal_mcp.handles import YesNoJudge

    chat = hosted_services.hub.vision_chat("gpt-4o")
    assert isinstance(chat, YesNoJudge) and chat.capabilities.yes_probability
    openai_fake.chat_answer = "Yes"
    openai_fake.chat_top_logprobs = [("Yes", math.log(0.6)), (" yes", math.log(0.1)), ("No", math.log(0.2))]
    p = await chat.p_yes(photo(size=32), "Is there a person? Answer yes or no.")
    assert math.isclose(p, 0.7 / 0.9)
    (request,) = openai_fake.requests
    body = request.json
    assert (body["logprobs"], body["top_logprobs"], body["max_completion_tokens"]) == (True, 20, 1)
    assert body["messages"][0]["content"][0] == {
        "type": "text",
        "text": "Is there a person? Answer yes or no.",
    }

    # Without log-probabilities in the answer, the answer's first word decides.
    openai_fake.chat_top_logprobs = None
    openai_fake.chat_answer = "No."
    assert await chat.p_yes(photo(size=32), "Is there a cat?") == 0.0
