from __future__ import annotations

import jsonschema
from mcp import Client

from multimodal_mcp.config import Config

from helpers import call_error, call_ok, data_uri, photo, text_of


async def test_describe_image_answers_with_the_vlms_greedy_output(client: Client, config: Config) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    # Under twice the side the tiny LLaVA's processor takes (32 px): the image reaches it as sent (a
    # larger one is first reduced, see test_a_large_photo_is_read_at_the_llava_processor_s_side).
    image = photo("chelsea", 48)
    result = await client.call_tool(
        "describe_image", {"image": data_uri(image), "prompt": "What animal is this?", "max_tokens": 6}
    )
    assert not result.is_error, text_of(result)
    tool = next(t for t in (await client.list_tools()).tools if t.name == "describe_image")
    jsonschema.validate(result.structured_content, tool.output_schema)
    out = result.structured_content
    assert out["model"] == "tiny-vlm" and out["prompt"] == "What animal is this?"
    assert 1 <= out["tokens"] <= 6

    path = config.server.tiny_dir / "vlm"
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What animal is this?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    expected = processor.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert out["text"] == expected
    assert expected in text_of(result)


async def test_describe_image_uses_a_default_prompt_and_the_models_default_length(client: Client) -> None:
    out = await call_ok(client, "describe_image", {"image": data_uri(photo("coffee", 64))})
    assert out["prompt"] == "Describe this image in detail."
    assert out["tokens"] <= 16  # tiny-vlm's configured max_tokens


async def test_describe_image_rejects_too_many_tokens_and_wrong_models(client: Client) -> None:
    image = data_uri(photo("coffee", 32))
    assert "limit of 1024" in await call_error(client, "describe_image", {"image": image, "max_tokens": 5000})
    assert "needs a vlm model" in await call_error(
        client, "describe_image", {"image": image, "model": "tiny-clip"}
    )


async def test_a_large_photo_is_read_at_the_llava_processor_s_side(
    client: Client,
    services,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    # LLaVA 1.5's processor takes one side (336 px; the tiny one 32 px), read from its settings before
    # loading: a 1024x768 JPEG is decoded at 1/8 (128x96), not at the 1024 px a VLM is otherwise given.
    import base64
    import io

    from multimodal_mcp.backends.tiny_transformers import CLIP_IMAGE_SIZE
    from multimodal_mcp.imaging import inputs

    assert services.hub.image_side("tiny-vlm") == CLIP_IMAGE_SIZE
    decoded: list[tuple[int, int]] = []
    real = inputs.decode_image

    def spy(data, **kwargs):  # type: ignore[no-untyped-def]
        found = real(data, **kwargs)
        decoded.append(found.image.size)
        return found

    monkeypatch.setattr(inputs, "decode_image", spy)
    buf = io.BytesIO()
    photo("chelsea", 512).resize((1024, 768)).save(buf, format="JPEG", quality=90)
    image = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    out = await call_ok(client, "describe_image", {"image": image, "max_tokens": 4})
    assert decoded == [(128, 96)]
    assert (out["image"]["width"], out["image"]["height"]) == (1024, 768)
