from __future__ import annotations

from pathlib import Path

import cv2
import jsonschema
import numpy as np
from mcp import Client
from PIL import Image, ImageDraw

from multimodal_mcp.server.app import build_server, create_services

from helpers import call_error, call_ok, cpu_only, data_uri, make_config, open_png, photo, read_png, text_of


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
    assert record.parameters["controls"] == [
        {"type": "canny", "controlnet": "tiny-controlnet-canny", "scale": 0.8}
    ]


async def test_controlled_generate_errors_name_what_can_work(client: Client) -> None:
    image = data_uri(_building())
    message = await call_error(
        client,
        "controlled_generate",
        {"prompt": "x", "control_image": image, "control_type": "depth", "model": "tiny-sdxl"},
    )
    assert "does not take control_type='depth'" in message and "models that do: tiny-sd15" in message
    message = await call_error(
        client,
        "controlled_generate",
        {"prompt": "x", "control_image": image, "low_threshold": 200, "high_threshold": 100},
    )
    assert "low_threshold (200)" in message
    assert "control_type" in await call_error(
        client, "controlled_generate", {"prompt": "x", "control_image": image, "control_type": "thermal"}
    )


def _mask(size: int = 64, box: tuple[int, int, int, int] = (16, 16, 47, 47)) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


async def test_img2img_keeps_the_init_size_and_strength_changes_the_output(client: Client) -> None:
    init = photo("chelsea", None).resize((96, 64))
    base = {"prompt": "a cat in a garden", "init_image": data_uri(init), "seed": 5, "steps": 4}
    out = await call_ok(client, "controlled_generate", {**base, "strength": 0.5})
    assert out["mode"] == "img2img" and out["control_image"] is None and out["strength"] == 0.5
    assert (out["parameters"]["width"], out["parameters"]["height"]) == (96, 64)
    first = await read_png(client, out["images"][0]["uri"])
    assert open_png(first).size == (96, 64)
    again = await call_ok(client, "controlled_generate", {**base, "strength": 0.5})
    assert await read_png(client, again["images"][0]["uri"]) == first
    stronger = await call_ok(client, "controlled_generate", {**base, "strength": 1.0})
    assert await read_png(client, stronger["images"][0]["uri"]) != first


async def test_inpainting_changes_only_the_masked_pixels(client: Client, services) -> None:  # type: ignore[no-untyped-def]
    init = photo("astronaut", 64)
    mask = _mask()
    out = await call_ok(
        client,
        "controlled_generate",
        {"prompt": "a red balloon", "init_image": data_uri(init), "mask_image": data_uri(mask), "seed": 2},
    )
    assert out["mode"] == "inpaint" and out["mask_image"]["id"]
    result = np.asarray(open_png(await read_png(client, out["images"][0]["uri"])).convert("RGB"), dtype=int)
    original = np.asarray(init, dtype=int)
    outside = np.asarray(mask) == 0
    assert np.array_equal(result[outside], original[outside])  # bit for bit
    assert np.abs(result[~outside] - original[~outside]).mean() > 5  # the inside was repainted
    record = services.store.record(out["images"][0]["id"])
    assert record.parents == [out["init_image"]["id"], out["mask_image"]["id"]]


async def test_controlnet_combines_with_img2img_and_inpainting(client: Client) -> None:
    init = data_uri(photo("coffee", 64))
    both = await call_ok(
        client,
        "controlled_generate",
        {"prompt": "x", "control_image": data_uri(_building()), "init_image": init, "seed": 1},
    )
    assert both["mode"] == "control+img2img" and both["controlnet"] == "tiny-controlnet-canny"
    inpaint = await call_ok(
        client,
        "controlled_generate",
        {
            "prompt": "x",
            "control_image": data_uri(_building()),
            "init_image": init,
            "mask_image": data_uri(_mask()),
            "seed": 1,
        },
    )
    assert inpaint["mode"] == "control+inpaint"


async def test_sdxl_takes_its_own_canny_controlnet_and_inpaints(client: Client) -> None:
    out = await call_ok(
        client,
        "controlled_generate",
        {"prompt": "x", "control_image": data_uri(_building()), "model": "tiny-sdxl"},
    )
    assert out["controlnet"] == "tiny-controlnet-canny-sdxl"
    init = photo("chelsea", 64)
    mask = _mask()
    painted = await call_ok(
        client,
        "controlled_generate",
        {"prompt": "x", "model": "tiny-sdxl", "init_image": data_uri(init), "mask_image": data_uri(mask)},
    )
    result = np.asarray(open_png(await read_png(client, painted["images"][0]["uri"])).convert("RGB"))
    outside = np.asarray(mask) == 0
    assert np.array_equal(result[outside], np.asarray(init)[outside])


async def test_bad_masks_and_mode_combinations_get_clear_errors(client: Client) -> None:
    init = data_uri(photo("astronaut", 64))
    colour = Image.new("RGB", (64, 64), (255, 0, 0))
    message = await call_error(
        client, "controlled_generate", {"prompt": "x", "init_image": init, "mask_image": data_uri(colour)}
    )
    assert "black and white" in message
    assert "needs init_image" in await call_error(
        client, "controlled_generate", {"prompt": "x", "control_image": init, "mask_image": data_uri(_mask())}
    )
    assert "pass control_image" in await call_error(client, "controlled_generate", {"prompt": "x"})


async def test_base_weights_load_once_across_text_to_image_img2img_and_inpainting(
    client: Client, services
) -> None:  # type: ignore[no-untyped-def]
    init = data_uri(photo("coffee", 64))
    for _ in range(2):
        await call_ok(client, "generate_image", {"prompt": "x", "seed": 1})
        await call_ok(client, "controlled_generate", {"prompt": "x", "init_image": init, "seed": 1})
        await call_ok(
            client,
            "controlled_generate",
            {"prompt": "x", "init_image": init, "mask_image": data_uri(_mask())},
        )
    assert services.pool.load_counts == {"tiny-sd15": 1}


async def test_several_controls_at_once_and_prepared_maps_used_as_given(client: Client) -> None:
    depth = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    out = await call_ok(
        client,
        "controlled_generate",
        {
            "prompt": "a tower",
            "controls": [
                {"image": data_uri(_building()), "type": "canny", "scale": 0.8},
                {"image": data_uri(depth), "type": "depth", "scale": 0.5, "preprocess": False},
            ],
            "seed": 4,
        },
    )
    assert [(c["type"], c["controlnet"], c["scale"]) for c in out["controls"]] == [
        ("canny", "tiny-controlnet-canny", 0.8),
        ("depth", "tiny-controlnet-depth", 0.5),
    ]
    depth_used = out["controls"][1]
    assert depth_used["control_image"]["id"] == depth_used["input_image"]["id"]  # a prepared map, as given
    single = await call_ok(
        client,
        "controlled_generate",
        {"prompt": "a tower", "control_image": data_uri(_building()), "seed": 4},
    )
    assert await read_png(client, single["images"][0]["uri"]) != await read_png(
        client, out["images"][0]["uri"]
    )


async def test_the_share_of_steps_under_control_changes_the_output(client: Client) -> None:
    base = {"prompt": "a tower", "control_image": data_uri(_building()), "seed": 6, "steps": 4}
    full = await call_ok(client, "controlled_generate", base)
    late = await call_ok(client, "controlled_generate", {**base, "control_start": 0.5})
    assert await read_png(client, full["images"][0]["uri"]) != await read_png(
        client, late["images"][0]["uri"]
    )
    assert "control_start (0.6) must be less than control_end (0.5)" in await call_error(
        client, "controlled_generate", {**base, "control_start": 0.6, "control_end": 0.5}
    )
    assert "either control_image or controls" in await call_error(
        client, "controlled_generate", {**base, "controls": [{"image": data_uri(_building())}]}
    )


async def test_a_reference_image_steers_through_the_ip_adapter_and_its_scale_matters(client: Client) -> None:
    reference = data_uri(photo("chelsea", 64))
    base = {"prompt": "a portrait", "reference_image": reference, "seed": 8}
    out = await call_ok(client, "controlled_generate", {**base, "reference_scale": 1.0})
    assert out["mode"] == "reference" and out["ip_adapter"] == "tiny-ip-adapter"
    assert out["reference_image"]["uri"].startswith("image://") and out["reference_scale"] == 1.0
    strong = await read_png(client, out["images"][0]["uri"])
    again = await call_ok(client, "controlled_generate", {**base, "reference_scale": 1.0})
    assert await read_png(client, again["images"][0]["uri"]) == strong
    off = await call_ok(client, "controlled_generate", {**base, "reference_scale": 0.0})
    assert await read_png(client, off["images"][0]["uri"]) != strong


async def test_the_ip_adapter_is_detached_after_its_call(client: Client) -> None:
    args = {"prompt": "a lighthouse", "seed": 3}
    before = await read_png(client, (await call_ok(client, "generate_image", args))["images"][0]["uri"])
    await call_ok(
        client,
        "controlled_generate",
        {"prompt": "x", "reference_image": data_uri(photo("coffee", 64)), "seed": 1},
    )
    after = await read_png(client, (await call_ok(client, "generate_image", args))["images"][0]["uri"])
    assert after == before  # the shared UNet is back to plain attention


async def test_a_reference_combines_with_controlnet_and_is_refused_where_no_adapter_is_configured(
    client: Client,
) -> None:
    both = await call_ok(
        client,
        "controlled_generate",
        {
            "prompt": "x",
            "control_image": data_uri(_building()),
            "reference_image": data_uri(photo("coffee", 64)),
        },
    )
    assert both["mode"] == "control+reference" and both["resize_mode"] is None
    wide = await call_ok(
        client,
        "controlled_generate",
        {"prompt": "x", "reference_image": data_uri(photo("coffee", None).resize((128, 64)))},
    )
    assert _said(wide, "reference_image").startswith("reference_image 128x64 was cropped to 64x64")
    assert wide["resize_mode"] == "crop_and_resize"
    message = await call_error(
        client,
        "controlled_generate",
        {"prompt": "x", "model": "tiny-sdxl", "reference_image": data_uri(photo("coffee", 64))},
    )
    assert "does not take `reference_image`" in message and "models that do: tiny-sd15" in message


async def test_flux_takes_a_flux_controlnet_alone_and_with_img2img(client: Client) -> None:
    base = {"prompt": "x", "control_image": data_uri(_building()), "model": "tiny-flux", "seed": 1}
    out = await call_ok(client, "controlled_generate", base)
    assert out["controlnet"] == "tiny-controlnet-canny-flux" and out["mode"] == "control"
    off = await call_ok(client, "controlled_generate", {**base, "conditioning_scale": 0.0})
    assert await read_png(client, off["images"][0]["uri"]) != await read_png(client, out["images"][0]["uri"])
    both = await call_ok(client, "controlled_generate", {**base, "init_image": data_uri(photo("coffee", 64))})
    assert both["mode"] == "control+img2img"
    two = [
        {"image": data_uri(_building()), "scale": 0.5},
        {"image": data_uri(photo("astronaut", 64)), "scale": 0.5},
    ]
    multi = await call_ok(
        client, "controlled_generate", {"prompt": "x", "controls": two, "model": "tiny-flux"}
    )
    assert [c["controlnet"] for c in multi["controls"]] == ["tiny-controlnet-canny-flux"] * 2


# --- fitting pictures to the output, and saying so ------------------------------------------------


def _disc_map(size: tuple[int, int] = (300, 100), radius: int = 40) -> Image.Image:
    """A prepared depth map: a white disc (near) on black (far)."""
    image = Image.new("RGB", size, (0, 0, 0))
    cx, cy = size[0] // 2, size[1] // 2
    ImageDraw.Draw(image).ellipse((cx - radius, cy - radius, cx + radius - 1, cy + radius - 1), fill="white")
    return image


def _extent(image: Image.Image) -> tuple[int, int]:
    bright = np.asarray(image.convert("L")) >= 128
    xs, ys = np.nonzero(bright.any(axis=0))[0], np.nonzero(bright.any(axis=1))[0]
    return int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def _said(out: dict, argument: str) -> str:  # type: ignore[type-arg]
    notes = [a["message"] for a in out["adjustments"] if a["argument"] == argument]
    assert len(notes) == 1, out["adjustments"]
    return notes[0]


async def test_a_control_map_of_another_aspect_ratio_keeps_its_shapes_and_the_result_says_how(
    client: Client,
) -> None:
    base = {
        "prompt": "a ball",
        "control_image": data_uri(_disc_map()),
        "control_type": "depth",
        "preprocess": False,
        "width": 256,
        "height": 256,
        "steps": 1,
        "seed": 1,
    }
    result = await client.call_tool("controlled_generate", base)
    out = result.structured_content
    assert out is not None and out["resize_mode"] == "crop_and_resize"
    used = open_png(await read_png(client, out["control_image"]["uri"]))
    width, height = _extent(used)
    assert used.size == (256, 256) and abs(width - height) <= 2  # still a circle
    assert abs(width - 80 * 256 / 100) <= 3  # scaled by 2.56 like the whole map
    note = _said(out, "control_image")
    assert "300x100 was scaled to 768x256 and cropped to 256x256" in note
    assert note in text_of(result)

    stretched = await call_ok(client, "controlled_generate", {**base, "resize_mode": "just_resize"})
    width, height = _extent(open_png(await read_png(client, stretched["control_image"]["uri"])))
    assert abs(width / height - 1 / 3) < 0.05  # the old behaviour, now asked for and said
    assert "stretched to 256x256" in _said(stretched, "control_image")

    filled = await call_ok(client, "controlled_generate", {**base, "resize_mode": "resize_and_fill"})
    shown = open_png(await read_png(client, filled["control_image"]["uri"]))
    width, height = _extent(shown)
    assert abs(width - height) <= 2 and abs(width - 80 * 256 / 300) <= 3
    assert np.asarray(shown)[:40].max() == 0  # the bands are black: no depth signal
    assert "padded to 256x256" in _said(filled, "control_image")


async def test_a_photo_off_the_models_size_step_is_fitted_and_the_suggested_size_is_taken(
    client: Client,
) -> None:
    init = photo("chelsea", None).resize((427, 640))
    mask = Image.new("L", init.size, 0)
    ImageDraw.Draw(mask).rectangle((100, 200, 300, 400), fill=255)
    base = {"prompt": "a cat", "init_image": data_uri(init), "mask_image": data_uri(mask), "seed": 3}
    out = await call_ok(client, "controlled_generate", base)
    assert (out["parameters"]["width"], out["parameters"]["height"]) == (424, 640)
    note = _said(out, "init_image")
    assert "427x640 was cropped to 424x640" in note and "mask_image was fitted" in note
    # What the old error suggested is now taken, and so is any other size (fitted by resize_mode).
    for size in ((424, 640), (432, 640), (320, 320)):
        args = {**base, "width": size[0], "height": size[1]}
        done = await call_ok(client, "controlled_generate", args)
        assert (done["images"][0]["width"], done["images"][0]["height"]) == size


async def test_a_small_mask_is_fitted_to_the_init_image_and_outside_pixels_come_back_exactly(
    client: Client,
) -> None:
    init = photo("astronaut", 64)
    out = await call_ok(
        client,
        "controlled_generate",
        {
            "prompt": "a red balloon",
            "init_image": data_uri(init),
            "mask_image": data_uri(_mask(32, (8, 8, 23, 23))),
        },
    )
    assert "mask_image 32x32 was resized to 64x64" in _said(out, "mask_image")
    result = np.asarray(open_png(await read_png(client, out["images"][0]["uri"])).convert("RGB"), dtype=int)
    outside = np.asarray(_mask()) == 0  # the same square, 16..47, at the init image's size
    assert np.array_equal(result[outside], np.asarray(init, dtype=int)[outside])
    assert np.abs(result[~outside] - np.asarray(init, dtype=int)[~outside]).mean() > 5


async def test_a_phone_photo_as_init_image_is_downscaled_to_the_servers_limits_and_says_so(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    config = make_config(tmp_path, tiny_dir, allowed_root, limits={"max_side": 128})
    services = create_services(config, devices=cpu_only())
    phone = Image.new("RGB", (4032, 3024), (90, 120, 160))
    ImageDraw.Draw(phone).ellipse((1016, 512, 3016, 2512), fill=(240, 200, 40))
    async with Client(build_server(config, services)) as client:
        out = await call_ok(
            client, "controlled_generate", {"prompt": "a sun", "init_image": data_uri(phone), "seed": 1}
        )
    assert (out["parameters"]["width"], out["parameters"]["height"]) == (128, 96)
    size_note = _said(out, "width")
    assert "The output is 128x96, smaller than init_image (4032x3024)" in size_note
    assert "128 px (max_side)" in size_note
    assert "4032x3024 was resized to 128x96" in _said(out, "init_image")


async def test_img2img_reports_the_denoising_steps_it_runs_and_a_step_count_that_runs_all(
    client: Client,
) -> None:
    totals: list[float | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        totals.append(total)

    base = {"prompt": "a cat", "init_image": data_uri(photo("chelsea", 64)), "strength": 0.55, "seed": 1}
    result = await client.call_tool(
        "controlled_generate", {**base, "steps": 10}, progress_callback=on_progress
    )
    out = result.structured_content
    assert out is not None
    message = _said(out, "steps")
    ran = int(message.split(" of the ")[0])
    assert {t for t in totals if t is not None} == {ran} == {int(10 * 0.55)}  # what the pipeline reported
    suggested = int(message.split("steps=")[1].split(" ")[0])
    totals.clear()
    again = await client.call_tool(
        "controlled_generate", {**base, "steps": suggested}, progress_callback=on_progress
    )
    assert again.structured_content is not None and {t for t in totals if t is not None} == {10}
    assert _said(again.structured_content, "steps").startswith(f"10 of the {suggested} denoising steps ran")


async def test_arguments_the_calls_modes_do_not_use_are_reported(client: Client) -> None:
    out = await call_ok(
        client,
        "controlled_generate",
        {
            "prompt": "x",
            "control_image": data_uri(_disc_map((64, 64), 20)),
            "control_type": "depth",
            "preprocess": False,
            "low_threshold": 50,
            "strength": 0.4,
            "seed": 1,
        },
    )
    assert _said(out, "strength") == "strength=0.4 was not used: it applies with init_image."
    assert "canny control maps only" in _said(out, "low_threshold")
    assert out["resize_mode"] is None and not [
        a for a in out["adjustments"] if a["argument"] == "control_image"
    ]
