"""SigLIP for clip_classify: sigmoid scores, each label's own probability."""

from __future__ import annotations

import math

from mcp import Client

from multimodal_mcp.config import Config

from helpers import call_error, call_ok, data_uri, photo, text_of


async def test_siglip_scores_are_each_labels_sigmoid_as_transformers_computes_them(
    client: Client, config: Config
) -> None:
    import torch
    from transformers import AutoProcessor, SiglipModel

    image = photo("coffee", 48)  # under twice the processor's side (32 px): it reaches it as sent
    labels = ["coffee", "a cat", "a rocket"]
    out = await call_ok(
        client, "clip_classify", {"image": data_uri(image), "labels": labels, "model": "tiny-siglip"}
    )
    assert out["model"] == "tiny-siglip" and out["sigmoid_scores"] is True
    path = config.server.tiny_dir / "siglip"
    model, processor = SiglipModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
    # SigLIP was trained on texts padded to its window: the model card's padding="max_length".
    inputs = processor(text=labels, images=[image], return_tensors="pt", padding="max_length")
    with torch.inference_mode():
        expected = torch.sigmoid(model(**inputs).logits_per_image[0]).tolist()
    got = {entry["label"]: entry["score"] for entry in out["labels"]}
    for label, probability in zip(labels, expected, strict=True):
        assert math.isclose(got[label], probability, abs_tol=1e-5)
    assert not math.isclose(sum(got.values()), 1.0, abs_tol=1e-3)  # not a softmax
    said = text_of(
        await client.call_tool(
            "clip_classify", {"image": data_uri(image), "labels": labels, "model": "tiny-siglip"}
        )
    )
    assert "own probability (sigmoid); they need not sum to 1" in said


async def test_a_siglip_labels_score_does_not_depend_on_the_other_labels_unlike_clips(client: Client) -> None:
    image = data_uri(photo("chelsea"))

    async def scores(model: str, labels: list[str]) -> dict[str, float]:
        out = await call_ok(client, "clip_classify", {"image": image, "labels": labels, "model": model})
        return {entry["label"]: entry["score"] for entry in out["labels"]}

    two, three = ["a cat", "a dog"], ["a cat", "a dog", "a car"]
    siglip_two, siglip_three = await scores("tiny-siglip", two), await scores("tiny-siglip", three)
    assert all(math.isclose(siglip_two[label], siglip_three[label], abs_tol=1e-6) for label in two)
    clip_two, clip_three = await scores("tiny-clip", two), await scores("tiny-clip", three)
    assert not math.isclose(clip_two["a cat"], clip_three["a cat"], abs_tol=1e-6)
    listed = {m["name"]: m for m in (await call_ok(client, "list_models", {}))["models"]}
    assert listed["tiny-siglip"]["capabilities"]["sigmoid_scores"] is True
    assert listed["tiny-clip"]["capabilities"]["sigmoid_scores"] is False


async def test_siglip_takes_one_label_and_clip_refuses_it_naming_a_siglip_model(client: Client) -> None:
    image = data_uri(photo("chelsea"))
    one = await call_ok(
        client, "clip_classify", {"image": image, "labels": ["a cat"], "model": "tiny-siglip"}
    )
    two = await call_ok(
        client, "clip_classify", {"image": image, "labels": ["a cat", "a dog"], "model": "tiny-siglip"}
    )
    (alone,) = one["labels"]
    cat = next(entry["score"] for entry in two["labels"] if entry["label"] == "a cat")
    assert alone["label"] == one["top_label"] == "a cat" and math.isclose(alone["score"], cat, abs_tol=1e-6)
    assert 0 < alone["score"] < 1  # its own probability, not a softmax of one (always 1)
    message = await call_error(
        client, "clip_classify", {"image": image, "labels": ["a cat"], "model": "tiny-clip"}
    )
    assert "model 'tiny-clip' needs at least 2 labels" in message and "model='tiny-siglip'" in message
