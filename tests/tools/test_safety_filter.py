"""The safety filter as the tools apply it: withheld images are not stored, and the result says so."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from mcp import Client
from PIL import Image

from multimodal_mcp.backends.safety import SafetyGate, Verdict
from multimodal_mcp.config import Config, SafetySettings, load_config
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.tools.common import Services

from helpers import call_ok, cpu_only, data_uri, make_config, photo, read_png, text_of


class FlagEveryOther:
    """A fake classifier (the SafetyFilter interface): flags the 1st, 3rd, ... image of each call."""

    name = "every-other"

    def check(self, images: Sequence[Image.Image]) -> list[Verdict]:
        return [
            Verdict(flagged=True, category="test", score=1.0, reason="flagged by the test's fake classifier")
            if i % 2 == 0
            else Verdict(flagged=False, category="test")
            for i in range(len(images))
        ]


class Broken:
    name = "broken"

    def check(self, images: Sequence[Image.Image]) -> list[Verdict]:
        raise RuntimeError("classifier crashed at /secret/path")


def _services(config: Config, filter_: object | None) -> Services:
    services = create_services(config, devices=cpu_only())
    if filter_ is not None:
        services.safety = SafetyGate(SafetySettings(filter="on"), loaded=filter_)  # type: ignore[arg-type]
    return services


@pytest.fixture
async def flagging(config: Config) -> AsyncIterator[tuple[Client, Services]]:
    services = _services(config, FlagEveryOther())
    async with Client(build_server(config, services)) as client:
        yield client, services


def _stored_ids(store_dir: Path) -> set[str]:
    return {p.stem for p in store_dir.rglob("*.json")}


async def test_flagged_images_are_withheld_and_the_others_returned(
    flagging: tuple[Client, Services], config: Config
) -> None:
    client, _ = flagging
    result = await client.call_tool("generate_image", {"prompt": "a boat", "seed": 3, "num_images": 3})
    assert not result.is_error, text_of(result)
    out = result.structured_content
    assert out is not None
    # images 0 and 2 flagged (seeds 3, 5); image 1 (seed 4) returned
    assert [img["seed"] for img in out["images"]] == [4]
    assert out["withheld"] == [
        {"seed": 3, "category": "test", "reason": "flagged by the test's fake classifier"},
        {"seed": 5, "category": "test", "reason": "flagged by the test's fake classifier"},
    ]
    text = text_of(result)
    assert "2 of 3 image(s) withheld by the server's safety filter" in text
    assert "not stored" in text
    assert [b.type for b in result.content] == ["text", "image", "resource_link"]  # one preview only
    assert _stored_ids(config.server.store_dir) == {out["images"][0]["id"]}


async def test_a_withheld_image_is_not_readable_by_the_id_it_would_have_had(
    flagging: tuple[Client, Services], tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    # The same call on a server without the filter gives the id (ids are content addresses).
    unfiltered = make_config(tmp_path / "unfiltered", tiny_dir, allowed_root)
    async with Client(build_server(unfiltered, _services(unfiltered, None))) as plain:
        made = await call_ok(plain, "generate_image", {"prompt": "a boat", "seed": 9})
    image_id = made["images"][0]["id"]

    client, services = flagging
    out = await call_ok(client, "generate_image", {"prompt": "a boat", "seed": 9})
    assert out["images"] == [] and len(out["withheld"]) == 1
    assert not services.store.exists(image_id)
    with pytest.raises(Exception, match="no image with id"):
        await read_png(client, f"image://{image_id}")
    for tool, args in [
        ("describe_image", {"image": f"image://{image_id}"}),
        ("clip_classify", {"image": f"image://{image_id}", "labels": ["a", "b"]}),
    ]:
        result = await client.call_tool(tool, args)
        assert result.is_error and "no image with id" in text_of(result)


async def test_when_every_image_is_withheld_the_result_says_so_without_previews(
    flagging: tuple[Client, Services],
) -> None:
    client, _ = flagging
    result = await client.call_tool("generate_image", {"prompt": "a boat", "seed": 1})
    assert not result.is_error
    assert [b.type for b in result.content] == ["text"]
    text = text_of(result)
    assert text.startswith("Generated no image to return") and "1 of 1 image(s) withheld" in text


async def test_controlled_generate_withholds_generated_images_but_keeps_the_control_map(
    flagging: tuple[Client, Services],
) -> None:
    client, _ = flagging
    args = {"prompt": "a tower", "control_image": data_uri(photo("astronaut", 64)), "seed": 2}
    out = await call_ok(client, "controlled_generate", args)
    assert out["images"] == [] and out["withheld"][0]["seed"] == 2
    assert (
        len(await read_png(client, out["control_image"]["uri"])) > 0
    )  # derived from the input, not filtered


async def test_a_failing_filter_withholds_everything_with_a_clean_error(config: Config) -> None:
    services = _services(config, Broken())
    async with Client(build_server(config, services)) as client:
        result = await client.call_tool("generate_image", {"prompt": "a boat", "seed": 1})
        assert result.is_error
        text = text_of(result)
        assert "safety filter could not check" in text and "/secret" not in text
        assert _stored_ids(config.server.store_dir) == set()
        await call_ok(client, "list_models", {})


async def test_http_defaults_run_the_real_filter_on_every_generated_image(
    tmp_path: Path, tiny_dir: Path
) -> None:
    http = load_config(
        profile="tiny",
        cache_dir=tmp_path,
        home=tmp_path,
        overrides={"store_dir": tmp_path / "store", "tiny_dir": tiny_dir},
        transport="http",
    )
    assert http.server.safety.filter == "on"
    services = create_services(http, devices=cpu_only())
    assert services.safety is not None
    async with Client(build_server(http, services)) as client:
        out = await call_ok(client, "generate_image", {"prompt": "a boat", "seed": 4, "num_images": 2})
        assert len(out["images"]) == 2 and out["withheld"] == []  # tiny-model noise is not flagged
    assert services.safety.checked == 2


def test_stdio_defaults_have_no_filter(tmp_path: Path, tiny_dir: Path) -> None:
    stdio = load_config(profile="tiny", cache_dir=tmp_path, home=tmp_path, transport="stdio")
    assert create_services(stdio, devices=cpu_only()).safety is None
