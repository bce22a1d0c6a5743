"""describe_image and compare_images against the fake hub: what the vision-language model is asked,
how its answer is checked, and how the narrative's pictures depend on the model's capabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from multimodal_mcp.errors import BackendError, InvalidArgument, UnsupportedOperation
from multimodal_mcp.tools.common import Services
from multimodal_mcp.tools.compare_images import (
    NARRATIVE_PROMPT,
    PAIR_NARRATIVE_PROMPT,
    CompareImagesParams,
    compare_images,
)
from multimodal_mcp.tools.describe_image import DescribeImageParams, describe_image

from fake_hub import (
    MODELS,
    FakeEmbedder,
    FakeHub,
    FakeVisionChat,
    fake_config,
    fake_handles,
    fake_services_for,
    image_vector,
)
from helpers import data_uri

pytestmark = pytest.mark.anyio  # marked at collection, so that parametrized tests keep their ids

RECEIPT_SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "number"}, "date": {"type": "string"}},
    "required": ["total", "date"],
}


def chat(hub: FakeHub, name: str = "fake-vlm") -> FakeVisionChat:
    handle = hub.fakes[name]
    assert isinstance(handle, FakeVisionChat)
    return handle


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.new("RGB", size, colour)


# --- describe_image -----------------------------------------------------------------------------


async def test_a_response_schema_reaches_the_model_and_its_json_answer_comes_back_as_data(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    vlm = chat(fake_hub)
    vlm.reply = 'The receipt says: {"total": 23.47, "date": "2024-03-15"} (rounded)'
    result = await describe_image(
        DescribeImageParams(
            image=data_uri(solid((250, 250, 250))),
            prompt="Extract the total and the date.",
            response_schema=RECEIPT_SCHEMA,
        ),
        fake_services,
    )
    (call,) = vlm.calls
    assert call.schema == RECEIPT_SCHEMA and call.prompt == "Extract the total and the date."
    assert call.max_tokens == 32  # fake-vlm's configured default
    assert [image.size for image in call.images] == [(32, 24)] and call.images[0].mode == "RGB"
    assert result.data == {"total": 23.47, "date": "2024-03-15"}  # the first JSON value in the text
    assert result.text == vlm.reply and result.model == "fake-vlm"
    assert result.image.id and fake_services.store.record(result.image.id).kind == "input"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("I think it was about twenty dollars.", "did not answer with JSON for response_schema"),
        ('{"total": "23.47"}', "does not match response_schema at (top): 'date' is a required property"),
        ('{"total": "23.47", "date": "today"}', "does not match response_schema at total"),
    ],
    ids=["prose", "missing", "wrong-type"],
)
async def test_an_answer_that_does_not_match_the_schema_is_an_error_naming_where(
    fake_services: Services, fake_hub: FakeHub, reply: str, expected: str
) -> None:
    chat(fake_hub).reply = reply
    params = DescribeImageParams(image=data_uri(solid((0, 0, 0))), response_schema=RECEIPT_SCHEMA)
    with pytest.raises(BackendError, match="model 'fake-vlm'") as failed:
        await describe_image(params, fake_services)
    assert expected in str(failed.value)


async def test_a_model_without_structured_output_refuses_a_schema_before_it_is_asked(
    tmp_path: Path, allowed_root: Path
) -> None:
    models = {**MODELS, "fake-vlm": {**MODELS["fake-vlm"], "capabilities": {"structured_output": "none"}}}
    services = fake_services_for(fake_config(tmp_path, allowed_root, models=models), fake_handles())
    assert isinstance(services.hub, FakeHub)
    params = DescribeImageParams(image=data_uri(solid((0, 0, 0))), response_schema=RECEIPT_SCHEMA)
    with pytest.raises(UnsupportedOperation) as refused:
        await describe_image(params, services)
    assert str(refused.value).startswith(
        "model 'fake-vlm' does not take `response_schema`; models that do: fake-vlm-multi."
    )
    assert chat(services.hub).calls == []
    assert list((tmp_path / "store").rglob("*.png")) == []  # refused before the image was read


async def test_an_invalid_schema_is_refused_before_the_model_is_asked(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    params = DescribeImageParams(image=data_uri(solid((0, 0, 0))), response_schema={"type": "receipt"})
    with pytest.raises(InvalidArgument, match="not a valid JSON Schema"):
        await describe_image(params, fake_services)
    assert chat(fake_hub).calls == []


async def test_detail_reaches_the_models_that_take_it_and_is_refused_by_the_others(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    image = data_uri(solid((10, 20, 30)))
    with pytest.raises(UnsupportedOperation, match="models that do: fake-vlm-multi"):
        await describe_image(DescribeImageParams(image=image, detail="high"), fake_services)
    assert chat(fake_hub).calls == []

    out = await describe_image(
        DescribeImageParams(image=image, detail="high", model="fake-vlm-multi", max_tokens=7), fake_services
    )
    (call,) = chat(fake_hub, "fake-vlm-multi").calls
    assert (call.detail, call.max_tokens, call.schema) == ("high", 7, None)
    assert call.prompt == out.prompt == "Describe this image in detail."


async def test_ground_scores_the_answers_noun_phrases_with_clip(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    chat(fake_hub).reply = "There is a red car next to a purple giraffe."
    clip = fake_hub.fakes["fake-clip"]
    assert isinstance(clip, FakeEmbedder)
    clip.cosines = {"a photo of red car": 0.3, "a photo of purple giraffe": 0.05}
    out = await describe_image(
        DescribeImageParams(image=data_uri(solid((200, 0, 0))), ground=True), fake_services
    )
    # Each phrase against the neutral captions (cosine 0.1 here), in one CLIP pass.
    assert clip.texts_seen == [
        ["a photo of red car", "a photo of purple giraffe", "a photo", "an image", "a picture of something"]
    ]
    assert out.grounding is not None and out.grounding.clip_model == "fake-clip"
    assert [(p.phrase, p.supported) for p in out.grounding.phrases] == [
        ("red car", True),
        ("purple giraffe", False),
    ]
    assert out.grounding.unsupported == ["purple giraffe"]
    assert "possibly not in the image (hallucinated?): 'purple giraffe'" in out.summary()


# --- compare_images -----------------------------------------------------------------------------


async def compare(services: Services, a: Image.Image, b: Image.Image, **arguments: Any) -> Any:
    params = CompareImagesParams(image_a=data_uri(a), image_b=data_uri(b), **arguments)
    return await compare_images(params, services)


async def test_a_one_image_model_gets_one_side_by_side_picture(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    red, blue = (200, 0, 0), (0, 0, 200)
    chat(fake_hub).reply = "The red became blue."
    out = await compare(fake_services, solid(red), solid(blue), describe=True)

    (call,) = chat(fake_hub).calls
    assert call.prompt == NARRATIVE_PROMPT and call.max_tokens == 32
    (picture,) = call.images
    assert picture.size == (64, 24)  # a | b
    assert picture.getpixel((5, 5)) == red and picture.getpixel((32 + 5, 5)) == blue
    assert (out.narrative, out.model) == ("The red became blue.", "fake-vlm")
    assert chat(fake_hub, "fake-vlm-multi").calls == []


async def test_a_model_taking_several_images_gets_the_pair_in_one_request(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    red, blue = (200, 0, 0), (0, 0, 200)
    out = await compare(
        fake_services, solid(red), solid(blue, (48, 40)), describe=True, model="fake-vlm-multi", detail="low"
    )
    (call,) = chat(fake_hub, "fake-vlm-multi").calls
    assert call.prompt == PAIR_NARRATIVE_PROMPT and call.detail == "low"
    assert [image.size for image in call.images] == [(32, 24), (48, 40)]  # each as given
    assert [image.getpixel((0, 0)) for image in call.images] == [red, blue]
    assert out.model == "fake-vlm-multi" and out.resized is True
    assert chat(fake_hub).calls == []


async def test_side_by_side_fits_a_differently_sized_second_image_to_the_first(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    out = await compare(fake_services, solid((200, 0, 0)), solid((0, 200, 0), (64, 64)), describe=True)
    (call,) = chat(fake_hub).calls
    assert out.resized is True and [image.size for image in call.images] == [(64, 24)]
    assert call.images[0].getpixel((40, 20)) == (0, 200, 0)


async def test_without_describe_no_model_is_asked_and_detail_alone_is_refused(
    fake_services: Services, fake_hub: FakeHub
) -> None:
    a, b = solid((200, 0, 0)), solid((200, 0, 0))
    out = await compare(fake_services, a, b)
    assert (out.narrative, out.model, out.clip_model) == (None, None, "fake-clip")
    assert out.ssim == 1.0 and out.pixel_difference == 0.0 and out.clip_similarity == pytest.approx(1.0)
    assert all(not chat(fake_hub, name).calls for name in ("fake-vlm", "fake-vlm-multi"))
    with pytest.raises(InvalidArgument, match="pass describe=True with it"):
        await compare(fake_services, a, b, detail="low")
    with pytest.raises(UnsupportedOperation, match="does not take detail='low'"):
        await compare(fake_services, a, b, detail="low", describe=True)  # fake-vlm takes no detail


async def test_clip_similarity_is_the_cosine_of_the_embedders_image_vectors(fake_services: Services) -> None:
    a, b = solid((200, 0, 0)), solid((0, 0, 200))
    out = await compare(fake_services, a, b)
    expected = float(np.dot(image_vector(a), image_vector(b)))
    assert out.clip_similarity == round(expected, 6) and out.clip_similarity < 0.5
    assert out.pixel_difference == 1.0 and out.diff_image.id
    record = fake_services.store.record(out.diff_image.id)
    assert record.kind == "diff" and record.parents == [out.image_a.id, out.image_b.id]
