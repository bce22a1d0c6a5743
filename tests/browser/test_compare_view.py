"""The compare view in Chromium: compare_images' real result, as a person sees and moves it."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from helpers import data_uri, photo

GREEN = (0, 255, 0)
CHANGED = (100, 20, 140, 60)  # the box painted green in the "after" image, in image pixels


def _patch(image: Image.Image, fx: float, fy: float) -> np.ndarray:
    """Mean colour of a 5x5 patch at a fraction of the image's width and height."""
    x, y = int(fx * image.width), int(fy * image.height)
    return np.asarray(image)[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0)


def _is_green(colour: np.ndarray) -> bool:
    return bool(colour[1] > 200 and colour[0] < 60 and colour[2] < 60)


async def test_compare_view_shows_the_images_swipes_overlays_the_heat_map_and_boxes_the_change(host) -> None:  # type: ignore[no-untyped-def]
    before = photo("astronaut", 160)
    after = before.copy()
    ImageDraw.Draw(after).rectangle((CHANGED[0], CHANGED[1], CHANGED[2] - 1, CHANGED[3] - 1), fill=GREEN)
    arguments = {"image_a": data_uri(before), "image_b": data_uri(after), "describe": True}
    result = await host.show("compare_images", arguments)
    compared = result.structured_content
    (region,) = compared["changed_regions"]
    assert (
        region["x"],
        region["y"],
        region["x"] + region["width"],
        region["y"] + region["height"],
    ) == CHANGED

    # 1. The images render: at 50% the left half is the before image, the right half the after image
    centre = (CHANGED[0] + CHANGED[2]) / 2 / 160, (CHANGED[1] + CHANGED[3]) / 2 / 160
    seen = await host.pixels("#stage", "compare-swipe")
    assert np.asarray(seen).std() > 20  # not blank
    assert _is_green(_patch(seen, *centre))  # right of the split: after
    left = (0.25, 0.5)
    expected = np.asarray(before.resize(seen.size)).astype(float)
    x, y = int(left[0] * seen.width), int(left[1] * seen.height)
    assert (
        np.abs(_patch(seen, *left) - expected[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3).mean(axis=0)).max()
        < 30
    )

    # 2. Moving the slider past the change shows the before image there; dragging back shows after
    await host.view.locator("#split").fill("95")
    moved = await host.pixels("#stage", "compare-swipe-95")
    assert not _is_green(_patch(moved, *centre))
    box = await host.view.locator("#stage").bounding_box()
    await host.page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    assert await host.view.locator("#split").input_value() == "30"
    assert _is_green(_patch(await host.pixels("#stage"), *centre))

    # 3. The heat map overlay at full opacity shows the stored heat map; at 0 the images again
    await host.view.locator("#heat-on").check()
    await host.view.locator("#opacity").fill("100")
    heat_seen = await host.pixels("#stage", "compare-heat")
    heat = await host.client.read_resource(compared["diff_image"]["uri"])
    assert heat.contents[0].mime_type == "image/png"
    assert _patch(heat_seen, *centre).mean() > _patch(heat_seen, *left).mean() + 100  # changed: bright
    assert not _is_green(_patch(heat_seen, *centre))
    await host.view.locator("#opacity").fill("50")
    await host.screenshot("compare-page-heat")
    await host.view.locator("#opacity").fill("0")
    assert _is_green(_patch(await host.pixels("#stage"), *centre))

    # 4. One box, where the change is; hidden when unticked
    boxes = host.view.locator("#regions .box")
    assert await boxes.count() == 1
    drawn = await boxes.first.bounding_box()
    scale = box["width"] / 160
    assert abs(drawn["x"] - (box["x"] + CHANGED[0] * scale)) <= 2
    assert abs(drawn["width"] - region["width"] * scale) <= 2
    await host.view.locator("#boxes-on").uncheck()
    assert not await boxes.first.is_visible()

    # 5. The metrics are the result's
    ssim = host.view.locator('[data-metric="SSIM"]')
    assert await ssim.inner_text() == f"{compared['ssim']:.3f}"
    changed = await host.view.locator('[data-metric="pixels changed"]').inner_text()
    assert changed == f"{100 * compared['pixel_difference']:.2f}%"
    assert await host.view.locator('[data-metric="changed regions"]').inner_text() == "1"
    assert (
        compared["narrative"] and compared["narrative"] in await host.view.locator("#narrative").inner_text()
    )

    # 6. Side by side: both images at once
    await host.view.locator("#mode-side").click()
    await host.view.locator("#side").wait_for()
    await host.pixels(".pair", "compare-side-by-side")
    assert not _is_green(_patch(await host.pixels("#side-a img"), *centre))
    assert _is_green(_patch(await host.pixels("#side-b img"), *centre))
    await host.screenshot("compare-page")
    assert not host.problems
