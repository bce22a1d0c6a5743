from __future__ import annotations

import jsonschema
import numpy as np
from mcp import Client
from PIL import Image, ImageDraw

from helpers import call_error, call_ok, data_uri, open_png, photo, read_png, text_of


def _with_rectangle(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    edited = img.copy()
    ImageDraw.Draw(edited).rectangle(box, fill=(255, 0, 0))
    return edited


async def test_identical_images_compare_as_identical(client: Client) -> None:
    image = data_uri(photo("astronaut", 96))
    result = await client.call_tool("compare_images", {"image_a": image, "image_b": image})
    assert not result.is_error, text_of(result)
    tool = next(t for t in (await client.list_tools()).tools if t.name == "compare_images")
    jsonschema.validate(result.structured_content, tool.output_schema)
    out = result.structured_content
    assert out["ssim"] == 1.0 and out["pixel_difference"] == 0.0 and out["changed_regions"] == []
    assert abs(out["clip_similarity"] - 1.0) < 1e-5
    assert out["narrative"] is None and out["model"] is None and out["resized"] is False
    assert out["resize"] is None


async def test_an_edit_is_found_as_one_region_and_shown_in_the_heat_map(client: Client) -> None:
    before = photo("astronaut", 128)
    after = _with_rectangle(before, (40, 50, 79, 89))  # 40x40 px
    out = await call_ok(client, "compare_images", {"image_a": data_uri(before), "image_b": data_uri(after)})
    (region,) = out["changed_regions"]
    assert abs(region["x"] - 40) <= 2 and abs(region["y"] - 50) <= 2
    assert abs(region["width"] - 40) <= 3 and abs(region["height"] - 40) <= 3
    assert abs(out["pixel_difference"] - 1600 / 128**2) < 0.02
    assert out["ssim"] < 1.0 and out["clip_similarity"] < 1.0

    heat = np.asarray(open_png(await read_png(client, out["diff_image"]["uri"])).convert("L"), dtype=float)
    assert heat.shape == (128, 128)
    assert heat[55:85, 45:75].mean() > heat[:40, :].mean() + 50


async def test_different_sizes_are_compared_after_resizing_the_second_image(client: Client) -> None:
    out = await call_ok(
        client,
        "compare_images",
        {"image_a": data_uri(photo("chelsea", 96)), "image_b": data_uri(photo("coffee", 64))},
    )
    assert out["resized"] is True
    assert out["resize"] == (
        "image_b (64x64) was resized to image_a's 96x96 before comparing. "
        "changed_regions are in image_a's pixels."
    )
    assert out["pixel_difference"] > 0.3 and out["ssim"] < 0.5


async def test_a_different_aspect_ratio_is_reported_as_a_stretch_with_both_sizes(client: Client) -> None:
    wide = photo("coffee", 96).resize((96, 48))
    result = await client.call_tool(
        "compare_images", {"image_a": data_uri(photo("coffee", 96)), "image_b": data_uri(wide)}
    )
    out = result.structured_content
    assert out is not None and out["resized"] is True
    said = (
        "image_b (96x48) was resized to image_a's 96x96 before comparing; its aspect ratio changed from "
        "2.00 to 1.00 (stretched, not cropped)"
    )
    assert out["resize"].startswith(said) and said in text_of(result)


async def test_describe_true_adds_a_narrative_from_the_vision_language_model(client: Client) -> None:
    before = photo("coffee", 64)
    out = await call_ok(
        client,
        "compare_images",
        {
            "image_a": data_uri(before),
            "image_b": data_uri(_with_rectangle(before, (0, 0, 20, 20))),
            "describe": True,
        },
    )
    assert out["model"] == "tiny-vlm" and isinstance(out["narrative"], str) and out["narrative"]


async def test_compare_images_reports_a_missing_image_id(client: Client) -> None:
    message = await call_error(
        client,
        "compare_images",
        {"image_a": "image://0123456789abcdef", "image_b": "image://0123456789abcdef"},
    )
    assert "image_a" in message and "no image with id 0123456789abcdef" in message
