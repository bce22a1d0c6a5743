"""The gallery view and its mask painter in Chromium: real generate_image results, and the tool calls
its buttons make reaching the server, their results appearing."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fake_hub import solid_colour


def _centre(image: Image.Image) -> np.ndarray:
    w, h = image.size
    return np.asarray(image)[h // 2 - 3 : h // 2 + 3, w // 2 - 3 : w // 2 + 3].reshape(-1, 3).mean(axis=0)


def _shows(image: Image.Image, colour: tuple[int, int, int]) -> bool:
    return bool(np.abs(_centre(image) - np.array(colour)).max() <= 6)


async def test_gallery_shows_the_result_and_earlier_images_and_its_buttons_call_tools(host) -> None:  # type: ignore[no-untyped-def]
    earlier = await host.client.call_tool("generate_image", {"prompt": "a blue square", "seed": 5})
    (old,) = earlier.structured_content["images"]
    arguments = {"prompt": "a red square", "seed": 3, "width": 96, "height": 64, "verify": True}
    result = await host.show("generate_image", arguments)
    (new,) = result.structured_content["images"]
    (check,) = result.structured_content["verification"]

    # 1. The result's image, with its seed and verdict; the earlier image under "Earlier"
    card = host.view.locator(f'#result .card[data-id="{new["id"]}"]')
    seen = await host.pixels(f'#result .card[data-id="{new["id"]}"] img', "gallery-result")
    assert _shows(seen, solid_colour(3))
    facts = " ".join((await card.locator("dl").inner_text()).split())
    assert "seed 3" in facts
    assert f"verified {'passed' if check['passed'] else 'failed'} (score {check['prompt_score']:.3f}" in facts
    earlier_cards = host.view.locator("#earlier .card")
    assert await earlier_cards.count() == 1
    assert await earlier_cards.first.get_attribute("data-id") == old["id"]
    assert _shows(await host.pixels("#earlier .card img"), solid_colour(5))

    # 2. Full size: the stored image read through the host, with its prompt
    await card.locator("button.open").click()
    full = host.view.locator("#full")
    await full.wait_for()
    assert await full.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [96, 64]
    assert "a red square" in await host.view.locator("#full-facts").inner_text()
    await host.view.locator("#close-full").click()

    # 3. Variation: generate_image with the same prompt and size, a new seed; its image appears first
    await card.click()
    calls = len(host.calls)
    await host.view.locator("#variation").click()
    variation = await host.next_call("generate_image", calls)
    assert variation.arguments["prompt"] == "a red square"
    assert (variation.arguments["width"], variation.arguments["height"]) == (96, 64)
    assert variation.arguments["seed"] != 3
    (made,) = variation.result.structured_content["images"]
    first = host.view.locator("#result .card").first
    await host.view.locator(f'#result .card[data-id="{made["id"]}"]').wait_for()
    assert await first.get_attribute("data-id") == made["id"]
    assert _shows(
        await host.pixels("#result .card >> nth=0 >> img"), solid_colour(variation.arguments["seed"])
    )

    # 4. Compare two selected images: compare_images of both; its metrics appear
    await host.view.locator(f'.card[data-id="{old["id"]}"]').click()
    calls = len(host.calls)
    await host.view.locator("#compare").click()
    compared = await host.next_call("compare_images", calls)
    assert {compared.arguments["image_a"], compared.arguments["image_b"]} == {old["uri"], new["uri"]}
    panel = host.view.locator("#comparison")
    await panel.wait_for()
    share = compared.result.structured_content["pixel_difference"]
    assert f"{100 * share:.2f}%" in await panel.inner_text()
    await host.screenshot("gallery")

    # 5. Use as init_image: controlled_generate starting from the last selected image
    calls = len(host.calls)
    await host.view.locator("#init").click()
    started = await host.next_call("controlled_generate", calls)
    assert started.arguments == {"prompt": "a blue square", "init_image": old["uri"]}
    assert started.result.structured_content["mode"] == "img2img"
    (made,) = started.result.structured_content["images"]
    await host.view.locator(f'#result .card[data-id="{made["id"]}"]').wait_for()

    # 6. Use as reference: controlled_generate keeping its edges (canny)
    calls = len(host.calls)
    await host.view.locator("#reference").click()
    steered = await host.next_call("controlled_generate", calls)
    assert steered.arguments == {"prompt": "a blue square", "control_image": old["uri"]}
    (made,) = steered.result.structured_content["images"]
    await host.view.locator(f'#result .card[data-id="{made["id"]}"]').wait_for()
    assert not host.problems


async def test_mask_painter_stores_the_painted_pixels_and_inpaints_with_them(host, view_services) -> None:  # type: ignore[no-untyped-def]
    result = await host.show(
        "generate_image", {"prompt": "a red square", "seed": 3, "width": 128, "height": 64}
    )
    (image,) = result.structured_content["images"]
    await host.view.locator(f'.card[data-id="{image["id"]}"]').click()
    await host.view.locator("#paint").click()
    canvas = host.view.locator("#paint-canvas")
    await canvas.wait_for()

    # 1. Brush a horizontal stroke across the middle, then erase its middle part
    box = await canvas.bounding_box()
    mouse = host.page.mouse

    async def drag(x0: float, x1: float) -> None:
        y = box["y"] + box["height"] * 0.5
        await mouse.move(box["x"] + box["width"] * x0, y)
        await mouse.down()
        for step in range(1, 11):
            await mouse.move(box["x"] + box["width"] * (x0 + (x1 - x0) * step / 10), y)
        await mouse.up()

    await host.view.locator("#brush-size").fill("40")
    await drag(0.2, 0.8)
    await host.view.locator("#eraser").click()
    await drag(0.45, 0.55)
    await host.pixels(".canvas-wrap", "mask-painter")

    # 2. Save: save_mask stores a mask, white where painted, black where erased or never painted
    calls = len(host.calls)
    await host.view.locator("#save-mask").click()
    saved = await host.next_call("save_mask", calls)
    assert saved.arguments["image"] == image["uri"]
    mask_ref = saved.result.structured_content["mask"]
    mask = np.asarray(view_services.store.open(mask_ref["id"]).convert("L"))
    assert mask.shape == (64, 128)
    row = mask[32]
    assert (row[int(0.25 * 128) : int(0.4 * 128)] == 255).all()  # brushed
    assert (row[int(0.6 * 128) : int(0.75 * 128)] == 255).all()  # brushed
    assert (row[int(0.48 * 128) : int(0.52 * 128)] == 0).all()  # erased
    assert (row[: int(0.1 * 128)] == 0).all() and (mask[:5] == 0).all()  # never painted
    assert saved.result.structured_content["painted_fraction"] == round(float((mask == 255).mean()), 6)
    await host.view.locator("#status").filter(has_text=mask_ref["uri"]).wait_for()

    # 3. Inpaint: controlled_generate with the image and the stored mask; its result appears
    calls = len(host.calls)
    await host.view.locator("#inpaint").click()
    inpainted = await host.next_call("controlled_generate", calls)
    assert inpainted.arguments["init_image"] == image["uri"]
    assert inpainted.arguments["mask_image"] == mask_ref["uri"]
    (made,) = inpainted.result.structured_content["images"]
    assert inpainted.result.structured_content["mode"] == "inpaint"
    await host.view.locator(f'#result .card[data-id="{made["id"]}"]').wait_for()
    await host.screenshot("mask-painter-page")
    assert not host.problems
