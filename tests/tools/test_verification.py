"""verify=True on generation and describe_image(ground=True): CLIP checks of images against words."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from mcp import Client
from PIL import Image

from multimodal_mcp.config import Config
from multimodal_mcp.imaging.codec import png_text
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.phrases import noun_phrases
from multimodal_mcp.tools.verification import (
    LABEL_TEMPLATE,
    NEUTRAL_CAPTIONS,
    ground_description,
    verify_images,
)

from helpers import call_error, call_ok, cpu_only, data_uri, make_config, open_png, photo, read_png, text_of


async def test_verify_scores_each_image_in_order_and_stores_the_scores_with_it(
    client: Client, services: Services
) -> None:
    out = await call_ok(
        client,
        "generate_image",
        {"prompt": "a red fox in the snow", "seed": 5, "num_images": 2, "verify_labels": ["a fox", "snow"]},
    )
    checks = out["verification"]
    assert [c["image_id"] for c in checks] == [img["id"] for img in out["images"]]
    for check, image in zip(checks, out["images"], strict=True):
        assert set(check["label_scores"]) == {"a fox", "snow"}
        stored = {k: v for k, v in check.items() if k != "image_id"}
        assert services.store.record(image["id"]).parameters["verification"] == stored
        chunk = json.loads(png_text(await read_png(client, image["uri"]))["multimodal-mcp"])
        assert chunk["parameters"]["verification"] == stored

        # The prompt score is the CLIP cosine of the stored image and the prompt, computed directly.
        pixels = open_png(await read_png(client, image["uri"])).convert("RGB")
        async with services.pool.use("tiny-clip") as model:
            image_emb, text_emb = await services.pool.run(
                model,
                lambda m, _s, _c, px=pixels: (
                    m.encode_images([px]),
                    m.encode_texts(["a red fox in the snow"]),
                ),
            )
        assert math.isclose(check["prompt_score"], float(image_emb[0] @ text_emb[0]), abs_tol=1e-3)


async def test_passed_means_prompt_score_over_the_threshold_and_no_missing_label(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    arguments = {"prompt": "a lighthouse", "seed": 2, "verify": True, "verify_labels": ["a lighthouse"]}
    outcomes = {}
    for name, thresholds in {
        "lenient": {"prompt_threshold": -1.0, "label_threshold": 0.0001},
        "strict prompt": {"prompt_threshold": 1.0, "label_threshold": 0.0001},
        "strict labels": {"prompt_threshold": -1.0, "label_threshold": 0.9999},
    }.items():
        config = make_config(tmp_path / name, tiny_dir, allowed_root, verification=thresholds)
        async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
            result = await client.call_tool("generate_image", arguments)
        (check,) = result.structured_content["verification"]  # type: ignore[index]
        assert check["prompt_threshold"] == thresholds["prompt_threshold"]
        assert check["missing_labels"] == [
            label for label, score in check["label_scores"].items() if score < thresholds["label_threshold"]
        ]
        assert check["passed"] == (
            check["prompt_score"] >= thresholds["prompt_threshold"] and not check["missing_labels"]
        )
        outcomes[name] = (check, text_of(result))
    assert outcomes["lenient"][0]["passed"] is True
    assert "passed: prompt score" in outcomes["lenient"][1]
    check, text = outcomes["strict prompt"]
    assert check["passed"] is False and f"prompt score {check['prompt_score']:.3f} (under 1.0)" in text
    assert "To improve:" in text and "FAILED" in text
    check, text = outcomes["strict labels"]
    assert check["passed"] is False and check["missing_labels"] == ["a lighthouse"]
    assert "missing: 'a lighthouse'" in text and "seed 2" in text


async def test_without_verify_there_is_no_verification(client: Client) -> None:
    out = await call_ok(client, "generate_image", {"prompt": "a fox", "seed": 1})
    assert out["verification"] is None


async def test_controlled_generate_verifies_too(client: Client) -> None:
    out = await call_ok(
        client,
        "controlled_generate",
        {"prompt": "a tower", "control_image": data_uri(photo("camera", 64)), "seed": 1, "verify": True},
    )
    (check,) = out["verification"]
    assert check["image_id"] == out["images"][0]["id"] and check["label_scores"] == {}
    result = await client.call_tool(
        "controlled_generate",
        {"prompt": "a tower", "control_image": data_uri(photo("camera", 64)), "seed": 1, "verify": True},
    )
    assert text_of(result).index("Steered by") < text_of(result).index("Verification with")


async def test_bad_verify_labels_are_refused(client: Client) -> None:
    message = await call_error(client, "generate_image", {"prompt": "x", "verify_labels": ["a cat", "a cat"]})
    assert "distinct" in message and "a cat" in message
    message = await call_error(client, "generate_image", {"prompt": "x", "verify_labels": []})
    assert "verify_labels" in message
    message = await call_error(client, "generate_image", {"prompt": "x", "verify_labels": ["x"] * 33})
    assert "verify_labels" in message


class _FixedClip:
    """A CLIP batcher answering with given cosines, to check how scores are made from them."""

    def __init__(self, cosines: dict[str, float], scale: float) -> None:
        self.cosines = cosines
        self.scale = scale
        self.asked: list[str] = []

    async def similarities(
        self, images: list[Image.Image], texts: list[str]
    ) -> tuple[list[list[float]], float]:
        self.asked = texts
        return [[self.cosines[t] for t in texts] for _ in images], self.scale


def _stub_services(config: Config, clip: _FixedClip) -> Any:
    hub = SimpleNamespace(
        pick=lambda requested, default_for, task: requested or config.defaults[default_for],
        embedder=lambda name: clip,
    )
    return SimpleNamespace(config=config, hub=hub)


async def test_a_label_scores_its_two_way_probability_against_neutral_captions(config: Config) -> None:
    neutral = dict(zip(NEUTRAL_CAPTIONS, (0.20, 0.22, 0.24), strict=True))  # mean 0.22
    cosines = {
        "a dog on grass": 0.30,
        LABEL_TEMPLATE.format("a dog"): 0.25,
        LABEL_TEMPLATE.format("a cat"): 0.19,
    }
    clip = _FixedClip({**neutral, **cosines}, scale=100.0)
    image = Image.new("RGB", (8, 8))

    (check,) = await verify_images(
        _stub_services(config, clip), [image], "a dog on grass", ["a dog", "a cat"]
    )

    assert check.prompt_score == 0.30
    assert math.isclose(check.label_scores["a dog"], 1 / (1 + math.exp(-100 * 0.03)), abs_tol=1e-4)
    assert math.isclose(check.label_scores["a cat"], 1 / (1 + math.exp(100 * 0.03)), abs_tol=1e-4)
    assert check.missing_labels == ["a cat"] and check.passed is False
    assert check.clip_model == "tiny-clip"


async def test_grounding_flags_the_phrases_clip_does_not_find(config: Config) -> None:
    text = "A red car parked next to a tall tree and a unicorn."
    neutral = dict.fromkeys(NEUTRAL_CAPTIONS, 0.2)
    found = {"red car": 0.26, "tall tree": 0.24, "unicorn": 0.17}
    clip = _FixedClip({**neutral, **{LABEL_TEMPLATE.format(p): c for p, c in found.items()}}, scale=100.0)

    grounding = await ground_description(_stub_services(config, clip), Image.new("RGB", (8, 8)), text)

    assert [p.phrase for p in grounding.phrases] == ["red car", "tall tree", "unicorn"]
    assert grounding.unsupported == ["unicorn"]
    assert [p.supported for p in grounding.phrases] == [True, True, False]


async def test_describe_image_with_ground_checks_the_phrases_of_its_answer(client: Client) -> None:
    image = data_uri(photo("astronaut", 64))
    plain = await call_ok(client, "describe_image", {"image": image})
    assert plain["grounding"] is None

    result = await client.call_tool("describe_image", {"image": image, "ground": True})
    assert not result.is_error, text_of(result)
    out = result.structured_content
    grounding = out["grounding"]  # type: ignore[index]
    assert [p["phrase"] for p in grounding["phrases"]] == noun_phrases(out["text"])  # type: ignore[index]
    for phrase in grounding["phrases"]:
        assert 0.0 <= phrase["score"] <= 1.0
        assert phrase["supported"] == (phrase["score"] >= grounding["threshold"])
    assert grounding["unsupported"] == [p["phrase"] for p in grounding["phrases"] if not p["supported"]]
    assert "Grounding with tiny-clip" in text_of(result)
    for phrase in grounding["unsupported"]:
        assert f"'{phrase}'" in text_of(result)


async def test_the_batcher_similarities_are_the_models_cosines(services: Services) -> None:
    image = photo("coffee", 64)
    texts = ["a cup of coffee", "a photo"]
    async with services.pool.running():
        rows, scale = await services.pool.clip("tiny-clip").similarities([image], texts)
        async with services.pool.use("tiny-clip") as model:
            image_emb, text_emb, (logit_scale, _) = await services.pool.run(
                model,
                lambda m, _s, _c: (m.encode_images([image]), m.encode_texts(texts), m.logit_parameters()),
            )
    assert np.allclose(rows[0], text_emb @ image_emb[0], atol=1e-5)
    assert math.isclose(scale, logit_scale, rel_tol=1e-6)


async def test_thorough_verification_on_tiny_models_checks_each_fact_with_the_model_its_kind_needs(
    client: Client, services: Services
) -> None:
    prompt = "a photo of two cats left of a dog, a sign that says OPEN"
    out = await call_ok(client, "generate_image", {"prompt": prompt, "seed": 3, "verify": "thorough"})
    (check,) = out["verification"]
    assert check["level"] == "thorough"
    assert [c["claim"] for c in check["claims"]] == [f["claim"] for f in check["facts"]]
    checked_by = {c["kind"]: c["checked_by"] for c in check["claims"]}
    assert checked_by == {
        "text": "rapidocr",
        "count": "tiny-owlv2",
        "relation": "tiny-owlv2",
        "object": "tiny-vlm",
    }
    for claim in check["claims"]:
        assert set(claim) == {"claim", "kind", "supported", "score", "evidence", "checked_by"}
        if claim["checked_by"] == "tiny-vlm":
            assert claim["supported"] == (claim["score"] >= 0.5)
    # The 64 px noise image has no text, and the tiny detector's boxes are noise (but real boxes).
    (text,) = [c for c in check["claims"] if c["kind"] == "text"]
    assert (text["supported"], text["score"]) == (False, 0.0)
    (count,) = [c for c in check["claims"] if c["kind"] == "count"]
    cats = [b for b in check["boxes"] if b["label"] == "cat"]
    assert count["supported"] == (len(cats) == 2) and f"{len(cats)} 'cat' box(es)" in count["evidence"]
    assert set(check["seconds"]) >= {"clip", "facts", "vlm", "ocr", "detector"}
    stored = services.store.record(out["images"][0]["id"]).parameters["verification"]
    assert stored == {k: v for k, v in check.items() if k != "image_id"}
    if check["boxes"]:
        assert services.store.record(check["overlay_id"]).kind == "overlay"
    assert "facts held" in text_of(
        await client.call_tool("generate_image", {"prompt": prompt, "seed": 3, "verify": "thorough"})
    )
