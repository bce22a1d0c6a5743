"""The test host itself: it applies the Apps default content security policy and reports what the
policy blocks, so a view that loads anything from elsewhere fails its tests."""

from __future__ import annotations

from helpers import data_uri, photo


async def test_the_host_blocks_and_reports_an_image_loaded_from_elsewhere(host) -> None:  # type: ignore[no-untyped-def]
    image = data_uri(photo("astronaut", 64))
    await host.show("compare_images", {"image_a": image, "image_b": image})
    view = host.page.frames[1]
    async with host.page.expect_console_message(lambda message: message.type == "error") as blocked:
        await view.evaluate(
            "() => { const img = document.createElement('img'); img.src = 'https://example.com/x.png'; "
            "document.body.append(img); }"
        )
    assert "Content Security Policy" in (await blocked.value).text
    assert host.problems == [(await blocked.value).text]
    host.problems.clear()  # seen: the fixture's own check (no problems) is for the other tests
