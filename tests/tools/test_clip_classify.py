from __future__ import annotations

import math

import jsonschema
from mcp import Client

from multimodal_mcp.config import Config

from helpers import call_error, call_ok, data_uri, photo, text_of


async def test_scores_are_a_softmax_over_the_labels_sorted_highest_first(client: Client) -> None:
    labels = ["a photo of a cat", "a photo of a dog", "a photo of a car"]
    result = await client.call_tool("clip_classify", {"image": data_uri(photo("chelsea")), "labels": labels})
    assert not result.is_error, text_of(result)
    tool = next(t for t in (await client.list_tools()).tools if t.name == "clip_classify")
    jsonschema.validate(result.structured_content, tool.output_schema)
    out = result.structured_content
    scores = [entry["score"] for entry in out["labels"]]
    assert sorted(entry["label"] for entry in out["labels"]) == sorted(labels)
    assert scores == sorted(scores, reverse=True)
    assert math.isclose(sum(scores), 1.0, abs_tol=1e-4)
    assert out["top_label"] == out["labels"][0]["label"]
    assert out["model"] == "tiny-clip" and out["image"]["uri"].startswith("image://")


async def test_scores_equal_clip_logits_computed_directly_with_transformers(
    client: Client, config: Config
) -> None:
    import torch
    from transformers import AutoProcessor, CLIPModel

    # Under twice the side the tiny CLIP's processor takes (32 px), so the image reaches the processor
    # as sent; a larger one is first reduced by a power of two (see the test at the end).
    image = photo("coffee", 48)
    labels = ["coffee", "a cat", "a rocket"]
    out = await call_ok(
        client, "clip_classify", {"image": data_uri(image), "labels": labels, "template": "a photo of {}"}
    )
    assert out["template"] == "a photo of {}"
    path = config.server.tiny_dir / "clip"
    model, processor = CLIPModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
    texts = [f"a photo of {label}" for label in labels]
    inputs = processor(text=texts, images=[image], return_tensors="pt", padding=True)
    with torch.inference_mode():
        expected = model(**inputs).logits_per_image[0].softmax(-1).tolist()
    got = {entry["label"]: entry["score"] for entry in out["labels"]}
    for label, probability in zip(labels, expected, strict=True):
        assert math.isclose(got[label], probability, abs_tol=1e-5)


async def test_the_template_changes_the_text_the_labels_are_scored_as(client: Client) -> None:
    image = data_uri(photo("astronaut"))
    plain = await call_ok(client, "clip_classify", {"image": image, "labels": ["rocket", "garden"]})
    templated = await call_ok(
        client,
        "clip_classify",
        {"image": image, "labels": ["rocket", "garden"], "template": "a drawing of a {}"},
    )
    assert plain["labels"] != templated["labels"]


async def test_a_repeated_image_is_stored_once(client: Client) -> None:
    image = data_uri(photo("astronaut"))
    first = await call_ok(client, "clip_classify", {"image": image, "labels": ["a", "b"]})
    second = await call_ok(client, "clip_classify", {"image": image, "labels": ["c", "d"]})
    assert first["image"]["id"] == second["image"]["id"]
    by_id = await call_ok(client, "clip_classify", {"image": first["image"]["uri"], "labels": ["a", "b"]})
    assert by_id["labels"] == first["labels"]


async def test_bad_labels_and_templates_are_rejected_with_the_rule(client: Client) -> None:
    image = data_uri(photo("astronaut", 32))
    assert "labels" in await call_error(client, "clip_classify", {"image": image, "labels": []})
    assert "at least 2" in await call_error(client, "clip_classify", {"image": image, "labels": ["only"]})
    assert "distinct" in await call_error(
        client, "clip_classify", {"image": image, "labels": ["a", "b", "a"]}
    )
    message = await call_error(
        client, "clip_classify", {"image": image, "labels": ["a", "b"], "template": "x"}
    )
    assert "'{}' exactly once" in message
    message = await call_error(
        client, "clip_classify", {"image": image, "labels": [f"l{i}" for i in range(65)]}
    )
    assert "limit of 64" in message
    await call_ok(client, "clip_classify", {"image": image, "labels": ["a", "b"]})


async def test_a_large_jpeg_is_decoded_at_the_side_the_model_s_processor_takes(
    client: Client,
    services,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    # The tiny CLIP's processor takes 32 px (its processor_config.json says so): a 1024x768 JPEG is
    # decoded at 1/8 (128x96), not at the 512 px a CLIP model is otherwise assumed to need.
    import base64
    import io

    from multimodal_mcp.backends.tiny_transformers import CLIP_IMAGE_SIZE
    from multimodal_mcp.imaging import inputs

    assert services.hub.image_side("tiny-clip") == CLIP_IMAGE_SIZE
    decoded: list[tuple[int, int]] = []
    real = inputs.decode_image

    def spy(data, **kwargs):  # type: ignore[no-untyped-def]
        found = real(data, **kwargs)
        decoded.append(found.image.size)
        return found

    monkeypatch.setattr(inputs, "decode_image", spy)
    buf = io.BytesIO()
    photo("astronaut", 512).resize((1024, 768)).save(buf, format="JPEG", quality=90)
    labels = ["a person", "a cat"]
    image = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    result = await client.call_tool("clip_classify", {"image": image, "labels": labels})
    assert not result.is_error, text_of(result)
    assert decoded == [(128, 96)]
    assert result.structured_content["image"]["width"] == 1024  # the stored image is the whole photo


async def test_the_first_call_reports_the_model_s_loading_as_loading_not_inference(client: Client) -> None:
    image = {"image": data_uri(photo("chelsea", 48)), "labels": ["a cat", "a dog"]}
    first = (await call_ok(client, "clip_classify", image))["timings"]
    second = (await call_ok(client, "clip_classify", image))["timings"]
    assert first["load_seconds"] > 0  # the tiny CLIP was loaded for this call (it used to say 0)
    assert first["inference_seconds"] >= 0
    assert first["load_seconds"] + first["inference_seconds"] <= first["total_seconds"]
    assert second["load_seconds"] < first["load_seconds"] / 10  # loaded already: only the lease
