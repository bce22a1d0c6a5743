"""The generation sequence (plan, confirm and rewrite, run) against the fake hub: no torch, no model.

What the tiny-model tests cannot show cheaply: exactly what reaches the model's handle, what is
refused before it is called, and what is stored with each image.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from multimodal_mcp.errors import BackendError, InvalidArgument, SpendingRefused, UnsupportedOperation
from multimodal_mcp.tools.common import Services, SpendingRequest, spending_approver
from multimodal_mcp.tools.generate_image import GenerateImageParams, generate_image

from fake_hub import (
    MODELS,
    FakeEmbedder,
    FakeHub,
    FakeImageGenerator,
    FakeTextChat,
    fake_config,
    fake_handles,
    fake_services_for,
    solid_colour,
)

pytestmark = pytest.mark.anyio  # marked at collection, so that parametrized tests keep their ids


def generator(hub: FakeHub, name: str = "fake-sd") -> FakeImageGenerator:
    handle = hub.fakes[name]
    assert isinstance(handle, FakeImageGenerator)
    return handle


async def generate(services: Services, **arguments: Any) -> Any:
    return await generate_image(GenerateImageParams(**arguments), services)


async def test_defaults_and_seeds_reach_the_model_and_each_image_is_stored_with_its_own_seed(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    result = await generate(fake_services, prompt="a red fox", seed=7, num_images=3)

    (request,) = generator(fake_hub).requests
    assert request.prompt == "a red fox" and request.num_images == 3
    assert request.seeds == (7, 8, 9)
    # The model's configured defaults fill what the caller left out.
    assert (request.width, request.height, request.steps) == (64, 64, 4)
    assert (request.guidance_scale, request.scheduler, request.negative_prompt) == (5.0, "euler", None)

    assert result.model == "fake-sd" and result.seed == 7
    assert [image.seed for image in result.images] == [7, 8, 9]
    for image in result.images:
        stored = fake_services.store.open(image.id)
        assert stored.size == (64, 64) and stored.getpixel((5, 5)) == solid_colour(image.seed)
        record = fake_services.store.record(image.id)
        assert (record.kind, record.prompt, record.seed, record.model) == (
            "generated",
            "a red fox",
            image.seed,
            "fake-sd",
        )
        assert record.parameters == {
            "width": 64,
            "height": 64,
            "steps": 4,
            "guidance_scale": 5.0,
            "scheduler": "euler",
            "num_images": 3,
        }
    assert "seed 7, 64x64, 4 steps, euler, guidance 5.0" in result.summary()


async def test_given_arguments_override_the_defaults_and_seeds_wrap_at_two_to_the_32(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    result = await generate(
        fake_services,
        prompt="a boat",
        negative_prompt="fog",
        seed=2**32 - 1,
        num_images=2,
        width=128,
        height=72,
        steps=9,
        guidance_scale=0.0,
        scheduler="dpm++",
    )
    (request,) = generator(fake_hub).requests
    assert request.seeds == (2**32 - 1, 0)
    assert (request.width, request.height, request.steps, request.guidance_scale) == (128, 72, 9, 0.0)
    assert (request.scheduler, request.negative_prompt) == ("dpm++", "fog")
    assert [image.seed for image in result.images] == [2**32 - 1, 0]
    assert result.parameters.negative_prompt == "fog"
    assert fake_services.store.record(result.images[1].id).negative_prompt == "fog"


async def test_a_missing_seed_is_drawn_once_and_the_images_count_up_from_it(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    result = await generate(fake_services, prompt="a kite", num_images=2)
    assert isinstance(result.seed, int) and 0 <= result.seed < 2**32
    (request,) = generator(fake_hub).requests
    assert request.seeds == (result.seed, (result.seed + 1) % 2**32)


@pytest.mark.parametrize(
    ("limits", "arguments", "expected"),
    [
        ({"max_images": 2}, {"num_images": 3}, "num_images=3 exceeds this server's limit of 2"),
        ({"max_steps": 10}, {"steps": 11}, "steps=11 exceeds this server's limit of 10"),
        ({"max_side": 256}, {"width": 512}, "width=512 exceeds this server's limit of 256"),
        ({"max_prompt_chars": 20}, {"prompt": "x" * 21}, "the prompt is 21 characters"),
        (
            {"max_pixels_per_call": 64 * 64 * 2},
            {"num_images": 3},
            "width*height*num_images = 64*64*3 = 12288 pixels",
        ),
        (
            {"max_pixel_steps_per_call": 64 * 64 * 4 * 2},
            {"num_images": 3},
            "width*height*steps*num_images = 64*64*4*3",
        ),
    ],
    ids=["images", "steps", "side", "prompt", "pixels", "pixel-steps"],
)
async def test_the_servers_limits_refuse_a_call_before_the_model_is_asked(
    tmp_path: Path, allowed_root: Path, limits: dict[str, int], arguments: dict[str, Any], expected: str
) -> None:
    services = fake_services_for(fake_config(tmp_path, allowed_root, limits=limits), fake_handles())
    with pytest.raises(InvalidArgument) as refused:
        await generate(services, **{"prompt": "a cat", **arguments})
    assert expected in str(refused.value)
    assert isinstance(services.hub, FakeHub) and generator(services.hub).requests == []
    assert list((tmp_path / "store").rglob("*.png")) == []


def _suggested_calls(message: str) -> list[dict[str, int]]:
    """The alternatives a size error names after its first ';': each 'a=1, b=2' group is one call."""
    tail = message.split(";", 1)[1]
    groups = re.findall(r"\w+=\d+(?:, \w+=\d+)*", tail)
    return [{k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", group)} for group in groups]


@pytest.mark.parametrize(
    ("limits", "arguments", "alternatives"),
    [
        ({"max_side": 256}, {"width": 512, "height": 384}, 1),
        ({"max_side": 256}, {"width": 512}, 1),
        ({"max_steps": 10}, {"steps": 11}, 1),
        ({"max_pixels_per_call": 64 * 64 * 2}, {"num_images": 3}, 1),  # no smaller size: 64 px is the least
        ({"max_pixels_per_call": 256 * 256 * 2}, {"width": 256, "height": 256, "num_images": 3}, 2),
        ({"max_pixel_steps_per_call": 64 * 64 * 4 * 2}, {"num_images": 3}, 2),
        ({"max_pixel_steps_per_call": 128 * 128 * 4 * 2}, {"width": 128, "height": 128, "num_images": 3}, 3),
        ({"max_pixel_steps_per_call": 200 * 120 * 4}, {"width": 400, "height": 240}, 2),
    ],
    ids=[
        "sides",
        "one-side",
        "steps",
        "pixels",
        "pixels-size",
        "pixel-steps",
        "pixel-steps-all",
        "budget-size",
    ],
)
async def test_every_size_error_names_calls_that_are_then_accepted(
    tmp_path: Path, allowed_root: Path, limits: dict[str, int], arguments: dict[str, Any], alternatives: int
) -> None:
    services = fake_services_for(fake_config(tmp_path, allowed_root, limits=limits), fake_handles())
    with pytest.raises(InvalidArgument) as refused:
        await generate(services, prompt="a cat", **arguments)
    calls = _suggested_calls(str(refused.value))
    assert len(calls) == alternatives, str(refused.value)
    for change in calls:
        result = await generate(services, prompt="a cat", **{**arguments, **change})
        made = result.images[0]
        assert (made.width, made.height) == (result.parameters.width, result.parameters.height)
        if "width" in change and "height" in arguments:  # a smaller size keeps the aspect ratio
            ratio = arguments["width"] / arguments["height"]
            assert abs(change["width"] / change["height"] - ratio) < 8 / min(change.values())


async def test_a_side_off_the_models_step_names_the_sides_it_takes_within_its_largest(
    tmp_path: Path, allowed_root: Path
) -> None:
    flux_like = {**MODELS["fake-sd"], "capabilities": {"sizes": {"multiple_of": 16, "max_side": 1016}}}
    config = fake_config(tmp_path, allowed_root, models={**MODELS, "fake-sd": flux_like})
    services = fake_services_for(config, fake_handles())
    for asked, fits in ((424, [416, 432]), (1016, [1008])):  # 1024 is over its largest side
        with pytest.raises(InvalidArgument) as refused:
            await generate(services, prompt="a cat", width=asked)
        (call,) = _suggested_calls(str(refused.value))
        assert call == {"width": fits[0]}
        told = [int(v) for v in re.findall(r"\d+", str(refused.value).split("use ", 1)[1])]
        assert told == fits
        for width in fits:
            assert (await generate(services, prompt="a cat", width=width)).parameters.width == width


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"seed": 3}, "model 'fake-hosted' does not take `seed`; models that do: fake-sd."),
        (
            {"scheduler": "euler"},
            "model 'fake-hosted' does not take scheduler='euler'; models that do: fake-sd.",
        ),
        (
            {"num_images": 2},
            "model 'fake-hosted' does not take num_images=2 (it takes num_images: at most 1); "
            "models that do: fake-sd.",
        ),
        (
            {"steps": 2, "guidance_scale": 1.0},
            "does not take `steps`; models that do: fake-sd. Omit steps, or pass model= one of those. "
            "It does not take `guidance_scale` either.",
        ),
        ({"width": 640}, "makes images of 1024x1024 (1:1), 1536x1024 (3:2) only, not 640x?"),
    ],
    ids=["seed", "scheduler", "num_images", "two", "size"],
)
async def test_an_argument_the_model_does_not_take_is_refused_naming_the_models_that_do(
    fake_services: Services, fake_hub: FakeHub, arguments: dict[str, Any], expected: str
) -> None:
    with pytest.raises((UnsupportedOperation, InvalidArgument)) as refused:
        await generate(fake_services, prompt="a cat", model="fake-hosted", **arguments)
    assert expected in str(refused.value)
    assert generator(fake_hub, "fake-hosted").requests == []


async def test_a_fixed_size_model_chooses_its_size_and_what_it_was_sent_is_stored(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    result = await generate(fake_services, prompt="a cat", model="fake-hosted", quality="high")
    (request,) = generator(fake_hub, "fake-hosted").requests
    assert (request.width, request.height, request.seeds, request.steps) == (None, None, None, None)
    assert (request.quality, request.guidance_scale, request.scheduler) == ("high", None, None)
    # The model chose the size: the result and the record say what it made.
    assert result.seed is None and (result.parameters.width, result.parameters.height) == (1024, 1024)
    assert result.provider_parameters == {"size": "1024x1024", "n": 1}
    (image,) = result.images
    assert image.seed is None and (image.width, image.height) == (1024, 1024)
    record = fake_services.store.record(image.id)
    assert record.parameters["backend"] == "openai" and record.parameters["source"] == "fake-image-api"
    assert record.parameters["size"] == "1024x1024" and record.parameters["steps"] is None

    # One side given picks the fixed size that has it.
    await generate(fake_services, prompt="a cat", model="fake-hosted", width=1536)
    second = generator(fake_hub, "fake-hosted").requests[1]
    assert (second.width, second.height) == (1536, 1024)


async def test_a_paid_model_is_confirmed_before_any_work_and_a_decline_spends_nothing(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    asked: list[SpendingRequest] = []

    async def decline(request: SpendingRequest) -> str:
        asked.append(request)
        return "decline"

    with spending_approver(decline), pytest.raises(SpendingRefused, match="declined"):
        await generate(fake_services, prompt="a cat", model="fake-hosted", width=1536, height=1024)
    assert asked == [SpendingRequest("fake-hosted", "openai", "1 image of 1536x1024")]
    assert generator(fake_hub, "fake-hosted").requests == []

    # A free model is never asked about.
    with spending_approver(decline):
        await generate(fake_services, prompt="a cat", seed=1)
    assert len(asked) == 1 and len(generator(fake_hub).requests) == 1


async def test_verification_scores_each_image_against_the_prompt_and_stores_the_scores(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    clip = fake_hub.fakes["fake-clip"]
    assert isinstance(clip, FakeEmbedder)
    clip.cosines = {"a red fox": 0.31, "a photo of a fox": 0.12, "a photo of snow": 0.30}
    result = await generate(
        fake_services, prompt="a red fox", seed=3, num_images=2, verify_labels=["a fox", "snow"]
    )

    # One CLIP pass: the prompt, each label in the template, then the neutral captions.
    assert clip.texts_seen == [
        ["a red fox", "a photo of a fox", "a photo of snow", "a photo", "an image", "a picture of something"]
    ]
    assert result.verification is not None
    assert [check.image_id for check in result.verification] == [image.id for image in result.images]
    check = result.verification[0]
    assert check.prompt_score == 0.31 and check.clip_model == "fake-clip"
    # A label's score: sigmoid(logit scale * (its cosine - the neutral captions' mean cosine)).
    assert check.label_scores["snow"] == round(1 / (1 + math.exp(-100 * (0.30 - 0.1))), 4)
    assert check.label_scores["a fox"] == round(1 / (1 + math.exp(-100 * (0.12 - 0.1))), 4)
    assert check.missing_labels == [] and check.passed  # both over the 0.5 label threshold

    clip.cosines["a photo of a fox"] = 0.05
    failed = await generate(fake_services, prompt="a red fox", seed=3, verify_labels=["a fox"])
    assert failed.verification is not None
    assert failed.verification[0].missing_labels == ["a fox"] and not failed.verification[0].passed
    assert "FAILED" in failed.summary() and "missing: 'a fox'" in failed.summary()

    stored = fake_services.store.record(result.images[0].id).parameters["verification"]
    assert stored == check.model_dump(exclude={"image_id"})


async def test_verify_false_asks_clip_nothing(fake_services: Services, fake_hub: FakeHub) -> None:
    result = await generate(fake_services, prompt="a red fox", seed=3)
    clip = fake_hub.fakes["fake-clip"]
    assert isinstance(clip, FakeEmbedder) and clip.texts_seen == []
    assert result.verification is None
    assert "verification" not in fake_services.store.record(result.images[0].id).parameters


async def test_an_enhanced_prompt_is_generated_from_but_verified_against_the_callers_prompt(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    writer = fake_hub.fakes["fake-text"]
    assert isinstance(writer, FakeTextChat)
    writer.reply = "Sure! Here is the enhanced prompt: A red fox in deep snow, golden dusk light"
    clip = fake_hub.fakes["fake-clip"]
    assert isinstance(clip, FakeEmbedder)

    result = await generate(fake_services, prompt="a fox", seed=5, enhance_prompt=True, verify=True)

    ((system, asked, max_tokens),) = writer.calls
    assert asked == "a fox" and "detailed prompts" in system and max_tokens == 160
    (request,) = generator(fake_hub).requests
    assert request.prompt == "A red fox in deep snow, golden dusk light"  # the preamble is cut
    assert clip.texts_seen[0][0] == "a fox"  # verified against what the caller asked for
    assert result.prompt_rewrite is not None and result.prompt_rewrite.rewritten
    assert result.parameters.prompt == request.prompt
    record = fake_services.store.record(result.images[0].id)
    assert record.prompt == request.prompt
    assert record.parameters["original_prompt"] == "a fox"
    assert record.parameters["prompt_rewrite_model"] == "fake-text"


async def test_extra_images_a_model_returns_are_dropped_and_none_is_an_error(
    fake_services: Services, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = generator(fake_hub)
    real = sd.generate

    async def too_many(request: Any, *, progress: Any = None) -> Any:
        made = await real(request, progress=progress)
        made.images.extend(made.images)  # twice what was asked
        return made

    monkeypatch.setattr(sd, "generate", too_many)
    result = await generate(fake_services, prompt="a cat", seed=1, num_images=2)
    assert [image.seed for image in result.images] == [1, 2]

    async def nothing(request: Any, *, progress: Any = None) -> Any:
        made = await real(request, progress=progress)
        made.images.clear()
        return made

    monkeypatch.setattr(sd, "generate", nothing)
    with pytest.raises(BackendError, match="model 'fake-sd' returned no image"):
        await generate(fake_services, prompt="a cat", seed=1)


async def test_fewer_images_than_asked_are_kept_with_their_seeds_and_reported(
    fake_services: Services, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = generator(fake_hub)
    real = sd.generate

    async def one_short(request: Any, *, progress: Any = None) -> Any:
        made = await real(request, progress=progress)
        del made.images[-1:]
        return made

    monkeypatch.setattr(sd, "generate", one_short)
    result = await generate(fake_services, prompt="a cat", seed=4, num_images=3)
    assert [image.seed for image in result.images] == [4, 5]
    (note,) = result.adjustments
    assert note.argument == "num_images" and note.message.startswith("2 of the 3 images asked for came back")
    assert note.message in result.summary()
