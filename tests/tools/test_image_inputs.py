"""Images as people have them, through the tools: transparency, masks, bit depth and colour reach every
model the same documented way (the tiny profile; inputs built in code)."""

from __future__ import annotations

import io

import numpy as np
from mcp import Client
from PIL import Image, ImageDraw

from helpers import (
    call_error,
    call_ok,
    data_uri,
    open_png,
    photo,
    read_image,
    read_png,
    swapped_profile,
    transparent_disc,
)


def _on(colour: tuple[int, int, int], img: Image.Image) -> Image.Image:
    base = Image.new("RGBA", img.size, (*colour, 255))
    return Image.alpha_composite(base, img).convert("RGB")


async def test_clip_sees_a_transparent_background_as_white_whatever_colour_hides_under_it(
    client: Client,
) -> None:
    labels = ["a disc", "a square", "a photo of a cat"]
    scores = []
    for img in (
        transparent_disc((0, 0, 0)),
        transparent_disc((255, 0, 0)),
        _on((255, 255, 255), transparent_disc((0, 0, 0))),
    ):
        out = await call_ok(client, "clip_classify", {"image": data_uri(img), "labels": labels})
        scores.append([round(r["score"], 6) for r in sorted(out["labels"], key=lambda r: r["label"])])
    on_black = await call_ok(
        client,
        "clip_classify",
        {"image": data_uri(_on((0, 0, 0), transparent_disc((0, 0, 0)))), "labels": labels},
    )
    assert scores[0] == scores[1] == scores[2]  # hidden black, hidden red, and the disc on white
    assert [round(r["score"], 6) for r in sorted(on_black["labels"], key=lambda r: r["label"])] != scores[0]


async def test_the_vlm_and_the_comparison_agree_on_transparency(client: Client) -> None:
    black, red = data_uri(transparent_disc((0, 0, 0))), data_uri(transparent_disc((255, 0, 0)))
    answers = [
        (await call_ok(client, "describe_image", {"image": image, "prompt": "What is this?"}))["text"]
        for image in (black, red, data_uri(_on((255, 255, 255), transparent_disc((0, 0, 0)))))
    ]
    assert answers[0] == answers[1] == answers[2]
    compared = await call_ok(client, "compare_images", {"image_a": black, "image_b": red})
    assert compared["ssim"] == 1.0 and compared["pixel_difference"] == 0.0


async def test_the_ip_adapter_reference_ignores_the_hidden_colour(client: Client) -> None:
    base = {"prompt": "a coin", "seed": 5}
    made = [
        await call_ok(
            client, "controlled_generate", {**base, "reference_image": data_uri(transparent_disc(hidden))}
        )
        for hidden in ((0, 0, 0), (255, 0, 0))
    ]
    pixels = [np.asarray(open_png(await read_png(client, out["images"][0]["uri"]))) for out in made]
    assert np.array_equal(pixels[0], pixels[1])  # the PNGs differ only in their parents' ids


async def test_inpainting_keeps_transparent_corners_white_not_black(client: Client) -> None:
    init = photo("astronaut", 64).convert("RGBA")
    for corner in ((0, 0, 7, 7), (56, 56, 63, 63)):
        ImageDraw.Draw(init).rectangle(corner, fill=(0, 0, 0, 0))
    strokes = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
    ImageDraw.Draw(strokes).rectangle((24, 24, 39, 39), fill=(255, 255, 255, 255))
    out = await call_ok(
        client,
        "controlled_generate",
        {"prompt": "a helmet", "init_image": data_uri(init), "mask_image": data_uri(strokes), "seed": 3},
    )
    result = np.asarray(open_png(await read_png(client, out["images"][0]["uri"])).convert("RGB"))
    assert (result[:8, :8] == 255).all() and (result[56:, 56:] == 255).all()
    flattened = np.asarray(_on((255, 255, 255), init))
    outside = np.ones((64, 64), dtype=bool)
    outside[24:40, 24:40] = False
    assert np.array_equal(result[outside], flattened[outside])  # only the stroke area was repainted


async def test_a_mask_in_openai_s_convention_is_read_as_its_transparent_area(client: Client) -> None:
    init = photo("astronaut", 64)
    erased = init.convert("RGBA")
    ImageDraw.Draw(erased).rectangle((0, 0, 63, 15), fill=(0, 0, 0, 0))
    out = await call_ok(
        client,
        "controlled_generate",
        {"prompt": "sky", "init_image": data_uri(init), "mask_image": data_uri(erased), "seed": 4},
    )
    result = np.asarray(open_png(await read_png(client, out["images"][0]["uri"])).convert("RGB"))
    assert np.array_equal(result[16:], np.asarray(init)[16:])  # below the erased band: untouched
    assert not np.array_equal(result[:16], np.asarray(init)[:16])


async def test_a_colour_picture_as_a_mask_is_refused_with_the_conventions(client: Client) -> None:
    init = data_uri(photo("astronaut", 64))
    message = await call_error(
        client, "controlled_generate", {"prompt": "x", "init_image": init, "mask_image": init}
    )
    assert "not a mask" in message and "transparent" in message and "OpenAI" in message


async def test_a_16_bit_depth_map_steers_as_a_ramp_not_as_white(client: Client) -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, format="PNG")
    out = await call_ok(
        client,
        "controlled_generate",
        {
            "prompt": "a hall",
            "control_image": "data:image/png;base64," + _b64(buf.getvalue()),
            "control_type": "depth",
            "preprocess": False,
            "seed": 1,
        },
    )
    stored = np.asarray((await read_image(client, out["control_image"]["uri"])).convert("L"))
    assert len(np.unique(stored)) == 64 and stored[0, 0] == 0 and stored[0, -1] == 255


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


async def test_a_thin_strip_is_refused_with_the_limit_before_any_model_runs(client: Client) -> None:
    strip = Image.new("L", (1, 100_000), 128)
    message = await call_error(client, "clip_classify", {"image": data_uri(strip), "labels": ["a", "b"]})
    assert "1x100000" in message and "32:1" in message


async def test_what_reading_an_input_changed_is_said_again_when_the_same_input_comes_again(
    client: Client,
) -> None:
    # Sent once, its notes are found by decoding; sent again (the bytes are known) or by its id, it is
    # not decoded again: the notes come from its record.
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    buf = io.BytesIO()
    init.save(buf, format="PNG", icc_profile=swapped_profile())
    sent = "data:image/png;base64," + _b64(buf.getvalue())
    said = []
    for image in (sent, sent, None):
        arguments = {"prompt": "a patch", "init_image": image or said[0][0], "steps": 2, "seed": 2}
        out = await call_ok(client, "controlled_generate", arguments)
        notes = [a["message"] for a in out["adjustments"] if a["argument"] == "init_image"]
        said.append((out["init_image"]["uri"], notes))
    assert any("converted from the embedded ICC profile" in note for note in said[0][1])
    assert said[1] == said[0] and said[2] == said[0]  # the same id and notes: bytes again, then the id


async def test_an_inpainted_picture_keeps_the_colours_of_a_profiled_input_outside_the_mask(
    client: Client,
) -> None:
    init = Image.new("RGB", (64, 64), (200, 40, 40))  # shown as blue by its profile
    buf = io.BytesIO()
    init.save(buf, format="PNG", icc_profile=swapped_profile())
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 15, 15), fill=255)
    out = await call_ok(
        client,
        "controlled_generate",
        {
            "prompt": "a patch",
            "init_image": "data:image/png;base64," + _b64(buf.getvalue()),
            "mask_image": data_uri(mask),
            "seed": 2,
        },
    )
    result = open_png(await read_png(client, out["images"][0]["uri"])).convert("RGB")
    notes = [a["message"] for a in out["adjustments"] if a["argument"] == "init_image"]
    assert any("converted from the embedded ICC profile" in note for note in notes)  # said, not silent
    r, g, b = result.getpixel((40, 40))
    assert b > 180 and r < 80  # outside the mask: the colour a colour-managed viewer showed
    stored_init = await read_image(client, out["init_image"]["uri"])
    assert "icc_profile" not in stored_init.info and stored_init.convert("RGB").getpixel((40, 40)) == (
        r,
        g,
        b,
    )


async def test_a_profiled_phone_jpeg_is_read_by_id_and_sent_in_its_converted_colours(client: Client) -> None:
    photo_p3 = Image.new("RGB", (640, 480), (200, 40, 40))  # shown as blue by its profile
    buf = io.BytesIO()
    photo_p3.save(buf, format="JPEG", quality=95, icc_profile=swapped_profile())
    sent = "data:image/jpeg;base64," + _b64(buf.getvalue())
    out = await call_ok(client, "clip_classify", {"image": sent, "labels": ["red", "blue"]})
    image_uri = out["image"]["uri"]
    blue = data_uri(Image.new("RGB", (640, 480), (40, 40, 200)))
    # By id at once (staged or converted): the converted pixels, as the first call saw them.
    by_id = await call_ok(client, "compare_images", {"image_a": image_uri, "image_b": blue})
    again = await call_ok(client, "compare_images", {"image_a": sent, "image_b": blue})
    assert by_id["ssim"] == again["ssim"] and by_id["pixel_difference"] == again["pixel_difference"] < 0.05
    stored = await read_image(client, image_uri)  # what a client is sent: converted, no profile
    assert stored.format == "WEBP" and "icc_profile" not in stored.info
    r, _, b = stored.convert("RGB").getpixel((320, 240))
    assert b > 180 and r < 80
