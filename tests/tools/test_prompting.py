from __future__ import annotations

import json

import numpy as np
import pytest
from mcp import Client

from multimodal_mcp.config import Config
from multimodal_mcp.imaging.codec import png_text
from multimodal_mcp.server.app import build_server
from multimodal_mcp.tools import prompting
from multimodal_mcp.tools.common import Clock, Services
from multimodal_mcp.tools.generate_image import GenerateImageParams, generate_image
from multimodal_mcp.tools.prompting import (
    REWRITE_SYSTEM,
    complete,
    pick_rewriter,
    rewrite_prompt,
    sanitize_rewrite,
)

from helpers import call_error, call_ok, data_uri, open_png, photo, read_png


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("  a red   fox,\n  golden light  ", "a red fox, golden light"),
        ("<|im_start|>assistant\nA red fox in snow<|im_end|>", "A red fox in snow"),
        ("ASSISTANT: a red fox</s>", "a red fox"),
        ('Sure! Here is the enhanced prompt:\n\n"A red fox, soft light"', "A red fox, soft light"),
        ("Prompt: **A red fox** at dawn", "A red fox at dawn"),
        ("<think>the user wants a fox</think>A red fox, watercolour", "A red fox, watercolour"),
        ("A red fox in snow.\n\nThis prompt stresses the light.", "A red fox in snow."),
        ("A red fox, dusk\nNegative prompt: blurry", "A red fox, dusk"),
        ("A red fox, dusk\nUSER: now a dog\nASSISTANT: a dog", "A red fox, dusk"),
        ("A red fox<|im_end|>\n<|im_start|>user\nnow a dog", "A red fox"),
        ("```\nA red fox, isometric\n```", "A red fox, isometric"),
        ("<|im_end|>", ""),
        ("   \n ", ""),
        ("..., !", ""),
    ],
)
def test_the_rewrite_is_cleaned_of_chat_artefacts_and_commentary(answer: str, expected: str) -> None:
    assert sanitize_rewrite(answer, 4000) == expected


def test_a_long_rewrite_is_cut_at_a_word_boundary_within_the_limit() -> None:
    answer = "a lighthouse on a cliff, " * 40
    cut = sanitize_rewrite(answer, 100)
    assert len(cut) <= 100 and answer.startswith(cut) and cut.endswith("cliff")
    assert sanitize_rewrite("x" * 300, 64) == "x" * 64  # no space to cut at: a hard cut


def test_the_system_instruction_asks_for_detail_keeps_intent_and_forbids_commentary() -> None:
    text = REWRITE_SYSTEM.lower()
    for needed in ("subject", "style", "lighting", "composition", "never contradict", "prompt only"):
        assert needed in text


async def test_rewriting_runs_the_configured_tiny_text_model_and_sanitises_its_answer(
    services: Services,
) -> None:
    name = pick_rewriter(services.config)
    spec = services.config.models[name]
    assert name == "tiny-text" and spec.task == "text"
    async with services.pool.running():
        raw, raw_tokens = await complete(
            services, Clock(), name, REWRITE_SYSTEM, "a cozy bookshop", spec.defaults.max_tokens or 1
        )
        rewrite = await rewrite_prompt(services, Clock(), name, "a cozy bookshop")
    assert raw_tokens == rewrite.tokens and 0 < rewrite.tokens <= (spec.defaults.max_tokens or 0)
    # Greedy decoding: the rewrite is exactly the model's answer, cleaned.
    assert rewrite.rewritten and rewrite.prompt == sanitize_rewrite(raw, 4000) != ""
    assert rewrite.original == "a cozy bookshop" and rewrite.model == "tiny-text"


async def test_an_unusable_answer_falls_back_to_the_original_prompt_and_says_so(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def chat_debris(*args: object, **kwargs: object) -> tuple[str, int]:
        return "ASSISTANT: <|im_end|>", 2

    monkeypatch.setattr(prompting, "complete", chat_debris)
    name = pick_rewriter(services.config)
    rewrite = await rewrite_prompt(services, Clock(), name, "a cozy bookshop")
    assert not rewrite.rewritten and rewrite.prompt == rewrite.original == "a cozy bookshop"
    assert rewrite.note == "tiny-text returned no usable prompt"
    assert "original prompt was used" in rewrite.summary()


async def test_generate_image_with_enhance_prompt_generates_from_and_stores_both_prompts(
    client: Client, services: Services
) -> None:
    out = await call_ok(
        client, "generate_image", {"prompt": "a cozy bookshop", "seed": 11, "enhance_prompt": True}
    )
    rewrite = out["prompt_rewrite"]
    assert rewrite["original"] == "a cozy bookshop" and rewrite["model"] == "tiny-text"
    assert rewrite["rewritten"] and rewrite["prompt"] != "a cozy bookshop"
    assert out["parameters"]["prompt"] == rewrite["prompt"]

    # Stored with the image: the PNG's A1111 line and JSON chunk, and the store's record.
    png_bytes = await read_png(client, out["images"][0]["uri"])
    chunks = png_text(png_bytes)
    assert chunks["parameters"].splitlines()[0] == rewrite["prompt"]
    embedded = json.loads(chunks["multimodal-mcp"])
    assert embedded["prompt"] == rewrite["prompt"]
    assert embedded["parameters"]["original_prompt"] == "a cozy bookshop"
    assert embedded["parameters"]["prompt_rewrite_model"] == "tiny-text"
    record = services.store.record(out["images"][0]["id"])
    assert record.prompt == rewrite["prompt"] and record.parameters["original_prompt"] == "a cozy bookshop"

    # The images came from the rewritten prompt: passing it directly with the seed repeats them.
    direct = await call_ok(client, "generate_image", {"prompt": rewrite["prompt"], "seed": 11})
    assert "prompt_rewrite" not in direct or direct["prompt_rewrite"] is None
    pixels = open_png(png_bytes).tobytes()
    assert open_png(await read_png(client, direct["images"][0]["uri"])).tobytes() == pixels
    original = await call_ok(client, "generate_image", {"prompt": "a cozy bookshop", "seed": 11})
    assert open_png(await read_png(client, original["images"][0]["uri"])).tobytes() != pixels


async def test_the_summary_shows_the_rewritten_prompt(client: Client) -> None:
    result = await client.call_tool("generate_image", {"prompt": "a boat", "seed": 2, "enhance_prompt": True})
    structured = result.structured_content
    assert structured is not None
    text = " ".join(getattr(block, "text", "") for block in result.content)
    assert f'Prompt rewritten by tiny-text: "{structured["prompt_rewrite"]["prompt"]}"' in text


async def test_without_enhance_prompt_the_text_model_is_never_loaded(services: Services) -> None:
    async with services.pool.running():
        result = await generate_image(GenerateImageParams(prompt="a boat", seed=1), services)
    assert result.prompt_rewrite is None and result.parameters.prompt == "a boat"
    assert not services.pool.is_loaded("tiny-text") and "tiny-text" not in services.pool.load_counts
    assert services.store.record(result.images[0].id).parameters.get("original_prompt") is None


async def test_enhance_prompt_without_a_configured_text_model_names_the_config_key(
    config: Config, services: Services
) -> None:
    defaults = {k: v for k, v in config.defaults.items() if k != "prompt_rewrite"}
    bare = config.model_copy(update={"defaults": defaults})
    services.config = bare
    async with Client(build_server(bare, services)) as client:
        message = await call_error(client, "generate_image", {"prompt": "a boat", "enhance_prompt": True})
    assert "[defaults] prompt_rewrite" in message and "tiny-text" in message
    assert not services.pool.is_loaded("tiny-sd15")  # refused before any work


async def test_controlled_generate_rewrites_the_prompt_too(client: Client, services: Services) -> None:
    out = await call_ok(
        client,
        "controlled_generate",
        {
            "prompt": "a portrait",
            "init_image": data_uri(photo("astronaut", 64)),
            "strength": 0.5,
            "seed": 4,
            "enhance_prompt": True,
        },
    )
    rewrite = out["prompt_rewrite"]
    assert rewrite["original"] == "a portrait" and out["parameters"]["prompt"] == rewrite["prompt"]
    record = services.store.record(out["images"][0]["id"])
    assert record.prompt == rewrite["prompt"] and record.parameters["original_prompt"] == "a portrait"
    assert record.parameters["mode"] == "img2img"
    assert np.asarray(open_png(await read_png(client, out["images"][0]["uri"]))).shape == (64, 64, 3)
