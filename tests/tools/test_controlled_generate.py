from __future__ import annotations

import cv2
import jsonschema
import numpy as np
from mcp import Client
from PIL import Image, ImageDraw

from helpers import call_error, call_ok, data_uri, open_png, read_png, text_of


def _building(size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), (30, 30, 30))
    ImageDraw.Draw(img).rectangle((20, 10, 43, 60), fill=(220, 220, 220))
    return img


async def test_canny_controlled_generation_returns_the_edge_map_it_was_steered_by(client: Client) -> None:
    reference = _building()
    args = {"prompt": "a futuristic glass skyscraper", "control_image": data_uri(reference), "seed": 11}
    result = await client.call_tool("controlled_generate", args)
    assert not result.is_error, text_of(result)
    tool = next(t for t in (await client.list_tools()).tools if t.name == "controlled_generate")
    jsonschema.validate(result.structured_content, tool.output_schema)
    out = result.structured_content
    assert out["control_type"] == "canny" and out["controlnet"] == "tiny-controlnet-canny"
    assert out["conditioning_scale"] == 0.8 and (out["parameters"]["width"], out["parameters"]["height"]) == (
        64,
        64,
    )

    edges = np.asarray(open_png(await read_png(client, out["control_image"]["uri"])).convert("L"))
    expected = cv2.Canny(cv2.cvtColor(np.asarray(reference), cv2.COLOR_RGB2GRAY), 100, 200)
    assert np.array_equal(edges, expected)
    assert edges[30, 20] == 255 or edges[30, 19] == 255  # the left wall of the building
    assert edges[30, 32] == 0 and edges[30, 5] == 0  # nothing inside or outside

    generated = open_png(await read_png(client, out["images"][0]["uri"]))
    assert generated.size == (64, 64)
    assert [b.type for b in result.content] == ["text", "image", "image", "resource_link", "resource_link"]


async def test_same_seed_same_bytes_and_the_scale_changes_the_output(client: Client) -> None:
    base = {"prompt": "a tower", "control_image": data_uri(_building()), "seed": 2}
    first = await call_ok(client, "controlled_generate", base)
    again = await call_ok(client, "controlled_generate", base)
    a = await read_png(client, first["images"][0]["uri"])
    assert a == await read_png(client, again["images"][0]["uri"])
    weaker = await call_ok(client, "controlled_generate", {**base, "conditioning_scale": 0.0})
    assert await read_png(client, weaker["images"][0]["uri"]) != a


async def test_the_control_size_follows_the_reference_aspect_ratio(client: Client) -> None:
    wide = Image.new("RGB", (128, 64), (0, 0, 0))
    out = await call_ok(
        client, "controlled_generate", {"prompt": "x", "control_image": data_uri(wide), "seed": 1}
    )
    assert (out["parameters"]["width"], out["parameters"]["height"]) == (128, 64)
    tall = Image.new("RGB", (60, 240), (0, 0, 0))
    out = await call_ok(
        client, "controlled_generate", {"prompt": "x", "control_image": data_uri(tall), "seed": 1}
    )
    assert (out["parameters"]["width"], out["parameters"]["height"]) == (64, 256)


async def test_the_generated_image_records_its_inputs_as_parents(client: Client, services) -> None:  # type: ignore[no-untyped-def]
    out = await call_ok(
        client, "controlled_generate", {"prompt": "x", "control_image": data_uri(_building()), "seed": 1}
    )
    record = services.store.record(out["images"][0]["id"])
    assert record.parents == [out["input_image"]["id"], out["control_image"]["id"]]
    assert record.parameters["controlnet"] == "tiny-controlnet-canny"


async def test_controlled_generate_errors_name_what_can_work(client: Client) -> None:
    image = data_uri(_building())
    message = await call_error(
        client, "controlled_generate", {"prompt": "x", "control_image": image, "model": "tiny-sdxl"}
    )
    assert "no canny ControlNet" in message and "tiny-sd15" in message
    message = await call_error(
        client,
        "controlled_generate",
        {"prompt": "x", "control_image": image, "low_threshold": 200, "high_threshold": 100},
    )
    assert "low_threshold (200)" in message
    assert "control_type" in await call_error(
        client, "controlled_generate", {"prompt": "x", "control_image": image, "control_type": "depth"}
    )
