"""Long and weighted prompts on the CLIP-encoded pipelines (SD 1.5, SDXL), encoded with compel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client

from multimodal_mcp.backends.prompt_encoding import to_compel_syntax
from multimodal_mcp.config import Config
from multimodal_mcp.server.app import build_server, create_services

from helpers import call_ok, cpu_only, data_uri, open_png, photo, read_png

# Words the tiny CLIP tokenizer holds whole: one token each, so the window counts words.
_FILLER = "a small red house with a blue car near the sea and a white horse on the road " * 8
_LONG = _FILLER + "under the sky"  # 147 tokens: two chunks
_TOKENS = len(_LONG.split())

pytestmark = pytest.mark.anyio  # marked at collection, so that parametrized tests keep their ids
_HEAD = " ".join(_LONG.split()[:75])  # what one 77-token window holds


def test_the_colon_weight_form_is_written_in_compel_syntax_and_other_text_is_left_alone() -> None:
    assert to_compel_syntax("a (red umbrella:1.3) in (fog: 0.8)") == "a (red umbrella)1.3 in (fog)0.8"
    assert to_compel_syntax("(cat:.5) (dog:2)") == "(cat).5 (dog)2"
    # Not a weight: no number, a time of day, a colon outside the innermost parentheses.
    for text in ("a (black) cat", "meet at (10:30 am)", "(outer (inner) text:1.2)"):
        assert to_compel_syntax(text) == text


async def _pixels(client: Client, out: dict[str, Any]) -> bytes:
    return open_png(await read_png(client, out["images"][0]["uri"])).convert("RGB").tobytes()


async def _make(client: Client, prompt: str, **more: Any) -> tuple[dict[str, Any], bytes]:
    out = await call_ok(client, "generate_image", {"prompt": prompt, "seed": 3, **more})
    return out, await _pixels(client, out)


def _said(out: dict[str, Any], argument: str = "prompt") -> list[str]:
    return [a["message"] for a in out["adjustments"] if a["argument"] == argument]


@pytest.mark.parametrize("base", ["tiny-sd15", "tiny-sdxl"])
async def test_a_prompt_past_the_window_is_encoded_whole_so_its_tail_changes_the_image(
    client: Client, base: str
) -> None:
    long, long_pixels = await _make(client, _LONG, model=base)
    head, head_pixels = await _make(client, _HEAD, model=base)
    assert long_pixels != head_pixels  # the last 75 tokens were read
    assert head["adjustments"] == []  # one chunk: the pipeline's own encoding, nothing to say
    (note,) = _said(long)
    assert f"is {_TOKENS} tokens" in note and "encoded whole, in 2 chunks" in note
    assert "nothing was cut" in note
    assert all(a["dropped"] is None for a in long["adjustments"])
    if base == "tiny-sdxl":
        assert "text_encoder and text_encoder_2 (CLIP)" in note
    listed = await call_ok(client, "list_models", {})
    assert [m["capabilities"]["prompt_weighting"] for m in listed["models"] if m["name"] == base] == [True]


async def test_weights_change_the_image_and_a_weight_of_one_is_the_plain_prompt(client: Client) -> None:
    plain, plain_pixels = await _make(client, "a red umbrella in the rain")
    assert plain["adjustments"] == []
    up, up_pixels = await _make(client, "a (red umbrella:1.5) in the rain")
    _, down_pixels = await _make(client, "a (red umbrella:0.5) in the rain")
    _, native_pixels = await _make(client, "a (red umbrella)1.5 in the rain")
    one, one_pixels = await _make(client, "a (red umbrella:1.0) in the rain")
    assert len({plain_pixels, up_pixels, down_pixels}) == 3
    assert native_pixels == up_pixels  # compel's own syntax and the (words:w) form are one thing
    assert one_pixels == plain_pixels  # (words:1.0) leaves the text as it is
    (note,) = _said(up)
    assert "weights were read (compel): 'red umbrella' x1.5" in note
    assert "Weights are written (words:weight)" in note and "1.3" not in note  # no example weight
    assert one["adjustments"] == []


async def test_a_long_negative_prompt_is_padded_to_the_prompt_and_read_whole(client: Client) -> None:
    out, pixels = await _make(client, "a cat", negative_prompt=_LONG)
    _, head_pixels = await _make(client, "a cat", negative_prompt=_HEAD)
    assert pixels != head_pixels
    (note,) = _said(out, "negative_prompt")
    assert f"negative_prompt is {_TOKENS} tokens" in note and "nothing was cut" in note


async def test_flux_keeps_reporting_what_its_own_windows_cut(client: Client) -> None:
    out, _ = await _make(client, _LONG, model="tiny-flux")
    assert {a["dropped"] is not None for a in out["adjustments"] if a["argument"] == "prompt"} == {True}
    assert not any("compel" in message for message in _said(out))


@pytest.fixture
async def literal_client(config: Config) -> AsyncIterator[Client]:
    """The tiny profile with tiny-sd15 and tiny-sdxl configured to read prompts as literal text."""
    literal = {
        name: config.models[name].model_copy(update={"capabilities": {"prompt_weighting": False}})
        for name in ("tiny-sd15", "tiny-sdxl")
    }
    changed = config.model_copy(update={"models": {**config.models, **literal}})
    services = create_services(changed, devices=cpu_only())
    async with Client(build_server(changed, services)) as c:
        yield c


async def test_prompt_weighting_false_reads_parentheses_as_text_and_reports_the_cut_word_for_word(
    literal_client: Client,
) -> None:
    weighted, weighted_pixels = await _make(literal_client, "a (red umbrella:1.5) in the rain")
    _, native_pixels = await _make(literal_client, "a (red umbrella)1.5 in the rain")
    assert weighted_pixels != native_pixels  # different literal text
    (plain_text,) = _said(weighted)
    assert "'(red umbrella:1.5)' were read as plain text: model 'tiny-sd15' does not read" in plain_text
    long, long_pixels = await _make(literal_client, _LONG)
    _, head_pixels = await _make(literal_client, _HEAD)
    assert long_pixels == head_pixels
    (cut,) = [a for a in long["adjustments"] if a["argument"] == "prompt"]
    assert cut["dropped"] == " ".join(_LONG.split()[75:])  # CLIP's 77 tokens hold 75 words and BOS/EOS
    assert f"is {_TOKENS} tokens for text_encoder (CLIP), which reads the first 75" in cut["message"]
    sdxl, _ = await _make(literal_client, _LONG, model="tiny-sdxl")
    (both,) = _said(sdxl)
    assert "text_encoder (CLIP) and text_encoder_2 (CLIP), which read the first 75" in both
    negative, _ = await _make(literal_client, "a cat", negative_prompt=_LONG)
    assert negative["adjustments"][0]["dropped"] == " ".join(_LONG.split()[75:])
    listed = await call_ok(literal_client, "list_models", {})
    (entry,) = [m for m in listed["models"] if m["name"] == "tiny-sd15"]
    assert entry["capabilities"]["prompt_weighting"] is False


async def test_weights_on_sd3_are_reported_as_read_as_plain_text(client: Client) -> None:
    prompt = "a (red umbrella:1.3) in the rain"
    for tool, extra in (
        ("generate_image", {}),
        ("controlled_generate", {"init_image": _picture(), "strength": 0.6}),
    ):
        out = await call_ok(
            client, tool, {"prompt": prompt, "model": "tiny-sd3", "seed": 1, "steps": 2, **extra}
        )
        (note,) = _said(out)
        assert "'(red umbrella:1.3)' were read as plain text: model 'tiny-sd3' does not read" in note
        readers = note.split("(capabilities.prompt_weighting): ")[1].rstrip(").").split(", ")
        assert {"tiny-sd15", "tiny-sdxl"} <= set(readers) and "tiny-sd3" not in readers


def _picture() -> str:
    return data_uri(photo("astronaut", 64))


@pytest.mark.parametrize("base", ["tiny-sd15", "tiny-sdxl"])
async def test_controlled_generation_and_img2img_read_long_weighted_prompts_whole(
    client: Client, base: str
) -> None:
    picture = data_uri(photo("astronaut", 64))
    weighted = "(red umbrella:1.4) " + _LONG
    for extra in ({"control_image": picture}, {"init_image": picture, "strength": 0.6}):
        out = await call_ok(
            client, "controlled_generate", {"prompt": weighted, "model": base, "seed": 1, "steps": 2, **extra}
        )
        notes = _said(out)
        assert any("encoded whole" in note for note in notes)
        assert any("'red umbrella' x1.4" in note for note in notes)
        assert all(a["dropped"] is None for a in out["adjustments"])
