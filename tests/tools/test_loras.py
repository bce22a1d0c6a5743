"""LoRAs through generate_image and controlled_generate: the tool logic against the fake hub (no
torch), then the tiny SD 1.5 with the tiny profile's two random-weight LoRAs (tiny-lora-ink, trigger
words "ink sketch", scale 0.8; tiny-lora-glow) and the tiny SD3's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcp import Client
from pydantic import ValidationError

from multimodal_mcp.errors import InvalidArgument, UnsupportedOperation
from multimodal_mcp.handles import LoraCondition
from multimodal_mcp.imaging.codec import png_text
from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.generate_image import GenerateImageParams, generate_image

from fake_hub import DIFFUSION, MODELS, FakeImageGenerator, fake_config, fake_handles, fake_services_for
from helpers import call_error, call_ok, data_uri, open_png, photo, read_png

# Marked here, not only by the root conftest's hook: anyio's plugin re-creates async tests that do not
# request its backend fixture at collection, which drops their parametrization.
pytestmark = pytest.mark.anyio

# --- the tool logic, against the fake hub ---------------------------------------------------------

_LORAS = {
    "fake-ink": {"trigger_words": ["ink sketch", "bold lines"], "scale": 0.7},
    "fake-glow": {},
}


@pytest.fixture
def lora_services(tmp_path: Path, allowed_root: Path) -> Services:
    models = dict(MODELS)
    for name, table in _LORAS.items():
        models[name] = {
            "task": "lora",
            "backend": "diffusers",
            "source": f"fake/{name}",
            "base_models": ["fake-sd"],
            **table,
        }
    handles = [h for h in fake_handles() if h.name != "fake-sd"]
    handles.append(FakeImageGenerator("fake-sd", DIFFUSION.model_copy(update={"loras": tuple(_LORAS)})))
    return fake_services_for(fake_config(tmp_path, allowed_root, models=models), handles)


def _sent(services: Services) -> Any:
    handle = services.hub.handle("fake-sd")
    assert isinstance(handle, FakeImageGenerator)
    return handle.requests[-1]


async def test_the_handle_gets_each_lora_with_its_scale_or_the_configured_one(
    lora_services: Services,
) -> None:
    params = GenerateImageParams.model_validate(
        {
            "prompt": "a cat with bold lines",
            "loras": [{"name": "fake-glow", "scale": -0.5}, {"name": "fake-ink"}],
        }
    )
    result = await generate_image(params, lora_services)
    sent = _sent(lora_services)
    assert sent.loras == (LoraCondition("fake-glow", -0.5), LoraCondition("fake-ink", 0.7))
    # Only the trigger word the prompt lacks is added, to what the model is given and what is reported.
    assert sent.prompt == result.parameters.prompt == "a cat with bold lines, ink sketch"
    assert [a.message for a in result.adjustments if a.argument == "prompt"] == [
        "The LoRAs' trigger words were appended to the prompt: 'ink sketch' (LoRA 'fake-ink')."
    ]
    plain = await generate_image(GenerateImageParams(prompt="a cat"), lora_services)
    assert _sent(lora_services).loras == () and _sent(lora_services).prompt == "a cat"
    assert plain.parameters.loras is None


async def test_the_result_parameters_name_the_loras_applied_with_their_scales_as_the_record_does(
    lora_services: Services,
) -> None:
    chosen = [{"name": "fake-glow", "scale": -0.5}, {"name": "fake-ink"}]
    result = await generate_image(
        GenerateImageParams.model_validate({"prompt": "a cat", "loras": chosen}), lora_services
    )
    applied = [{"name": "fake-glow", "scale": -0.5}, {"name": "fake-ink", "scale": 0.7}]  # 0.7: configured
    assert result.model_dump(mode="json")["parameters"]["loras"] == applied
    record = lora_services.store.record(result.images[0].id)
    assert record.parameters["loras"] == applied
    # What the result shows is a loras argument that repeats the call.
    again = await generate_image(
        GenerateImageParams.model_validate({"prompt": "a cat", "loras": applied}), lora_services
    )
    assert _sent(lora_services).loras == (LoraCondition("fake-glow", -0.5), LoraCondition("fake-ink", 0.7))
    assert again.parameters.loras == result.parameters.loras


@pytest.mark.parametrize(
    ("loras", "error", "message"),
    [
        (
            [{"name": "fake-sepia"}],
            InvalidArgument,
            "no LoRA named 'fake-sepia'; its LoRAs: fake-ink, fake-glow",
        ),
        ([{"name": "fake-ink"}, {"name": "fake-ink"}], InvalidArgument, "LoRA 'fake-ink' is given twice"),
    ],
)
async def test_bad_loras_are_refused_before_the_model_is_asked(
    lora_services: Services, loras: list[dict[str, Any]], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        await generate_image(
            GenerateImageParams.model_validate({"prompt": "x", "loras": loras}), lora_services
        )
    handle = lora_services.hub.handle("fake-sd")
    assert isinstance(handle, FakeImageGenerator) and handle.requests == []


@pytest.mark.parametrize(
    ("loras", "message"),
    [
        ([{"name": "fake-ink", "scale": 2.5}], "less than or equal to 2"),
        ([{"name": "fake-ink", "scale": -2.5}], "greater than or equal to -2"),
        ([{"name": "fake-ink"}] * 5, "at most 4 items"),
    ],
)
def test_how_many_loras_and_their_scales_are_bounds_of_the_arguments_schema(
    loras: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        GenerateImageParams.model_validate({"prompt": "x", "loras": loras})
    schema = GenerateImageParams.model_json_schema()
    choice = schema["$defs"]["LoraChoice"]["properties"]["scale"]["anyOf"][0]
    assert (choice["minimum"], choice["maximum"]) == (-2.0, 2.0)


async def test_a_model_without_loras_refuses_the_argument_naming_the_models_with_some(
    lora_services: Services,
) -> None:
    params = GenerateImageParams.model_validate(
        {"prompt": "x", "model": "fake-hosted", "loras": [{"name": "fake-ink"}]}
    )
    with pytest.raises(UnsupportedOperation, match="does not take `loras`; models that do: fake-sd"):
        await generate_image(params, lora_services)


# --- the tiny models ------------------------------------------------------------------------------

BASE = {"prompt": "a lighthouse at dusk, ink sketch", "seed": 21}


async def _pixels(client: Client, out: dict[str, Any]) -> np.ndarray:
    return np.asarray(open_png(await read_png(client, out["images"][0]["uri"])), dtype=int)


async def _bytes(client: Client, out: dict[str, Any]) -> bytes:
    return await read_png(client, out["images"][0]["uri"])


async def test_the_same_seed_with_a_lora_gives_a_different_image(client: Client) -> None:
    plain = await call_ok(client, "generate_image", BASE)
    styled = await call_ok(client, "generate_image", {**BASE, "loras": [{"name": "tiny-lora-ink"}]})
    assert np.abs(await _pixels(client, plain) - await _pixels(client, styled)).mean() > 1


async def test_a_plain_call_after_a_lora_call_gives_the_bytes_it_gave_before_any_lora(client: Client) -> None:
    before = await _bytes(client, await call_ok(client, "generate_image", BASE))
    lora = {"loras": [{"name": "tiny-lora-ink", "scale": 1.0}, {"name": "tiny-lora-glow", "scale": 0.5}]}
    await call_ok(client, "generate_image", {**BASE, **lora})
    after = await _bytes(client, await call_ok(client, "generate_image", BASE))
    assert after == before


async def test_two_loras_at_different_scales_differ_from_each_alone_and_repeat(client: Client) -> None:
    ink = await _pixels(
        client,
        await call_ok(client, "generate_image", {**BASE, "loras": [{"name": "tiny-lora-ink", "scale": 1.0}]}),
    )
    glow = await _pixels(
        client,
        await call_ok(
            client, "generate_image", {**BASE, "loras": [{"name": "tiny-lora-glow", "scale": 1.0}]}
        ),
    )
    both = {
        **BASE,
        "loras": [{"name": "tiny-lora-ink", "scale": 1.0}, {"name": "tiny-lora-glow", "scale": 0.4}],
    }
    mixed = await _pixels(client, await call_ok(client, "generate_image", both))
    assert (
        np.abs(mixed - ink).mean() > 1 and np.abs(mixed - glow).mean() > 1 and np.abs(ink - glow).mean() > 1
    )
    # The scales count: other weights give another image, the same ones the same image.
    swapped = {
        **BASE,
        "loras": [{"name": "tiny-lora-ink", "scale": 0.4}, {"name": "tiny-lora-glow", "scale": 1.0}],
    }
    assert np.abs(await _pixels(client, await call_ok(client, "generate_image", swapped)) - mixed).mean() > 1
    assert (await _pixels(client, await call_ok(client, "generate_image", both)) == mixed).all()


async def test_a_scale_of_zero_gives_the_image_without_the_lora(client: Client) -> None:
    plain = await _pixels(client, await call_ok(client, "generate_image", BASE))
    off = await call_ok(
        client, "generate_image", {**BASE, "loras": [{"name": "tiny-lora-ink", "scale": 0.0}]}
    )
    assert np.abs(await _pixels(client, off) - plain).max() <= 1


async def test_trigger_words_missing_from_the_prompt_are_appended_and_reported(client: Client) -> None:
    out = await call_ok(
        client, "generate_image", {"prompt": "a lighthouse", "seed": 3, "loras": [{"name": "tiny-lora-ink"}]}
    )
    assert out["parameters"]["prompt"] == "a lighthouse, ink sketch"
    record = json.loads(png_text(await _bytes(client, out))["multimodal-mcp"])
    assert record["parameters"]["loras"] == [{"name": "tiny-lora-ink", "scale": 0.8}]
    (note,) = [a for a in out["adjustments"] if a["argument"] == "prompt"]
    assert "'ink sketch' (LoRA 'tiny-lora-ink')" in note["message"]
    # Already in the prompt (any case): nothing is added or reported.
    kept = await call_ok(
        client, "generate_image", {"prompt": "An INK SKETCH of a boat", "loras": [{"name": "tiny-lora-ink"}]}
    )
    assert kept["parameters"]["prompt"] == "An INK SKETCH of a boat"
    assert not [a for a in kept["adjustments"] if a["argument"] == "prompt"]


async def test_the_configured_scale_is_used_when_a_call_gives_none(client: Client) -> None:
    default = await _pixels(
        client, await call_ok(client, "generate_image", {**BASE, "loras": [{"name": "tiny-lora-ink"}]})
    )
    configured = {**BASE, "loras": [{"name": "tiny-lora-ink", "scale": 0.8}]}  # tiny.toml: scale = 0.8
    assert (await _pixels(client, await call_ok(client, "generate_image", configured)) == default).all()


async def test_unknown_duplicate_and_out_of_range_loras_are_refused_with_what_works(client: Client) -> None:
    unknown = await call_error(client, "generate_image", {**BASE, "loras": [{"name": "watercolor"}]})
    assert "has no LoRA named 'watercolor'" in unknown
    assert (
        "its LoRAs: tiny-lora-ink, tiny-lora-glow" in unknown and 'loras=[{"name": "tiny-lora-ink"' in unknown
    )
    twice = await call_error(
        client, "generate_image", {**BASE, "loras": [{"name": "tiny-lora-ink"}, {"name": "tiny-lora-ink"}]}
    )
    assert "given twice" in twice
    loud = await call_error(
        client, "generate_image", {**BASE, "loras": [{"name": "tiny-lora-ink", "scale": 3}]}
    )
    assert "loras.0.scale" in loud and "less than or equal to 2" in loud
    many = await call_error(client, "generate_image", {**BASE, "loras": [{"name": "tiny-lora-ink"}] * 5})
    assert "loras" in many and "at most 4 items" in many
    other = await call_error(
        client, "generate_image", {**BASE, "model": "tiny-sdxl", "loras": [{"name": "tiny-lora-ink"}]}
    )
    assert "model 'tiny-sdxl' does not take `loras`" in other and "models that do: tiny-sd15" in other
    for message in (unknown, twice, loud, many, other):
        assert "Traceback" not in message


async def test_list_models_lists_each_base_models_loras_and_the_pool_counts_their_memory(
    client: Client,
) -> None:
    listed = await call_ok(client, "list_models", {})
    models = {m["name"]: m for m in listed["models"]}
    assert models["tiny-sd15"]["capabilities"]["loras"] == ["tiny-lora-ink", "tiny-lora-glow"]
    assert models["tiny-sdxl"]["capabilities"]["loras"] == []
    assert models["tiny-sd3"]["capabilities"]["loras"] == ["tiny-lora-sd3"]
    ink = models["tiny-lora-ink"]
    assert ink["task"] == "lora" and ink["base_models"] == ["tiny-sd15"] and not ink["loaded"]
    assert (ink["trigger_words"], ink["default_scale"]) == (["ink sketch"], 0.8)
    assert (models["tiny-lora-glow"]["trigger_words"], models["tiny-lora-glow"]["default_scale"]) == ([], 1.0)
    await call_ok(client, "generate_image", {**BASE, "loras": [{"name": "tiny-lora-ink"}]})
    after = {m["name"]: m for m in (await call_ok(client, "list_models", {"task": "lora"}))["models"]}
    assert set(after) == {"tiny-lora-ink", "tiny-lora-glow", "tiny-lora-sd3"}
    assert after["tiny-lora-ink"]["loaded"] and after["tiny-lora-ink"]["memory_bytes"] > 0
    assert not after["tiny-lora-glow"]["loaded"]


async def test_controlled_generate_takes_loras_and_stays_unchanged_after_them(client: Client) -> None:
    args = {"prompt": "a lighthouse, ink sketch", "control_image": data_uri(photo(size=64)), "seed": 4}
    plain = await call_ok(client, "controlled_generate", args)
    styled = await call_ok(
        client, "controlled_generate", {**args, "loras": [{"name": "tiny-lora-glow", "scale": 1.5}]}
    )
    assert np.abs(await _pixels(client, plain) - await _pixels(client, styled)).mean() > 1
    assert styled["parameters"]["loras"] == [{"name": "tiny-lora-glow", "scale": 1.5}]
    assert plain["parameters"]["loras"] is None
    again = await call_ok(client, "controlled_generate", args)
    assert await _bytes(client, again) == await _bytes(client, plain)


async def test_a_lora_on_the_sd3_transformer_changes_the_image_for_that_call_only(client: Client) -> None:
    args = {"prompt": "a tower", "model": "tiny-sd3", "seed": 6}
    before = await _bytes(client, await call_ok(client, "generate_image", args))
    styled = await call_ok(client, "generate_image", {**args, "loras": [{"name": "tiny-lora-sd3"}]})
    after = await _bytes(client, await call_ok(client, "generate_image", args))
    assert after == before
    pixels = np.asarray(open_png(before), dtype=int)
    assert np.abs(await _pixels(client, styled) - pixels).mean() > 1


async def test_a_lora_combines_with_an_ip_adapter_reference_and_both_come_off_after(client: Client) -> None:
    args = {"prompt": "a boat", "reference_image": data_uri(photo(size=64)), "seed": 8}
    before = await call_ok(client, "controlled_generate", args)
    # tiny-lora-glow has no trigger words: the prompt stays, the LoRA alone changes the image.
    both = await call_ok(client, "controlled_generate", {**args, "loras": [{"name": "tiny-lora-glow"}]})
    assert both["mode"] == "reference" and both["parameters"]["prompt"] == "a boat"
    assert np.abs(await _pixels(client, both) - await _pixels(client, before)).mean() > 1
    plain = {"prompt": "a boat", "seed": 8}
    first = await _bytes(client, await call_ok(client, "generate_image", plain))
    await call_ok(client, "controlled_generate", {**args, "loras": [{"name": "tiny-lora-ink"}]})
    assert await _bytes(client, await call_ok(client, "generate_image", plain)) == first
    again = await call_ok(client, "controlled_generate", args)
    assert await _bytes(client, again) == await _bytes(client, before)
