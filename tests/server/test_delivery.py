"""Delivery presets and client limits: what each result carries inline, and that it fits the client."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from mcp import Client
from mcp.types import CallToolResult
from PIL import Image

from multimodal_mcp.config import CLIENT_LIMITS, ConfigError, load_config
from multimodal_mcp.imaging.store import ImageStore
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.server.rendering import Renderer
from multimodal_mcp.tools.common import ImageRef, Result

from helpers import call_error, call_ok, cpu_only, data_uri, make_config, photo, read_png, text_of

MiB = 1024 * 1024


class FourImages(Result):
    """A result shaped like generate_image's: image references, previews of each."""

    images: list[ImageRef]

    def summary(self) -> str:
        return "Made " + ", ".join(img.uri for img in self.images) + ". Next: compare_images."

    def preview_ids(self) -> list[str]:
        return [img.id for img in self.images]


def _noise(seed: int, side: int = 512) -> Image.Image:
    """Random pixels: the worst case for JPEG and PNG sizes."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def _four_large_images(store: ImageStore) -> FourImages:
    return FourImages(
        images=[ImageRef.of(store.put(_noise(i), kind="generated", prompt="noise")) for i in range(4)]
    )


def _stored_png(path: str | Path) -> bytes:
    """The file's bytes; fails unless it is a PNG file."""
    data = Path(path).read_bytes()
    assert data.startswith(b"\x89PNG")
    return data


def _blocks(result: CallToolResult, kind: str) -> list[Any]:
    return [block for block in result.content if block.type == kind]


def _conservative_tokens(result: CallToolResult) -> int:
    """Every character of the serialised result at 3 characters per token, and each image at least
    width*height/750 (the vision cost), whichever is larger."""
    text = len(result.model_dump_json(by_alias=True, exclude_none=True))
    pixels = 0
    for block in _blocks(result, "image"):
        width, height = Image.open(io.BytesIO(base64.b64decode(block.data))).size
        pixels += max(0, math.ceil(width * height / 750) - math.ceil(len(block.data) / 3))
    return math.ceil(text / 3) + pixels


async def test_four_512px_images_fit_each_client_preset_in_each_delivery(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    # (a loop, not parametrize: the anyio marker is added after collection)
    for preset in sorted(CLIENT_LIMITS):
        for delivery in ("preview", "full", "none", "path"):
            await _check_fits(tmp_path / preset / delivery, tiny_dir, allowed_root, preset, delivery)


async def _check_fits(tmp_path: Path, tiny_dir: Path, allowed_root: Path, preset: str, delivery: str) -> None:
    config = make_config(tmp_path, tiny_dir, allowed_root, client_limits=preset)
    store = ImageStore(config.server.store_dir)
    result = _four_large_images(store)

    rendered = await Renderer(config, store).render(result, delivery)  # type: ignore[arg-type]

    limits = CLIENT_LIMITS[preset]
    size = len(rendered.model_dump_json(by_alias=True, exclude_none=True).encode())
    assert size < limits.max_result_bytes
    assert size < config.server.result_max_bytes
    if limits.max_result_tokens is not None:
        assert _conservative_tokens(rendered) <= limits.max_result_tokens
    texts, images, links = (_blocks(rendered, k) for k in ("text", "image", "resource_link"))
    assert len(texts) == 1 and len(links) == 4
    assert [link.uri for link in links] == [img.uri for img in result.images]
    for img in result.images:
        assert img.uri in texts[0].text  # the ids are in the text whatever is inline
    if delivery == "none":
        assert images == []
        return
    # 512 px noise PNGs are about 790 kB each: 'full' never fits, and falls back to previews with a note
    assert len(images) == 4
    for block in images:
        assert block.mime_type == "image/jpeg"
        assert max(Image.open(io.BytesIO(base64.b64decode(block.data))).size) <= min(
            config.server.preview_max_side, limits.max_image_side
        )
    if delivery == "full":
        assert "do not fit this client's limits" in texts[0].text and "delivery='path'" in texts[0].text
    if delivery == "path":
        for ref in rendered.structured_content["images"]:  # type: ignore[index]
            assert _stored_png(ref["path"]) and ref["path"] in texts[0].text
    else:
        assert all("path" not in ref for ref in rendered.structured_content["images"])  # type: ignore[index]


async def test_a_token_budget_too_small_for_any_preview_leaves_the_images_out_with_a_note(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    limits = {"max_result_bytes": MiB, "max_result_tokens": 2_000}
    config = make_config(tmp_path, tiny_dir, allowed_root, client_limits=limits)
    store = ImageStore(config.server.store_dir)

    rendered = await Renderer(config, store).render(_four_large_images(store), "preview")

    assert _blocks(rendered, "image") == [] and len(_blocks(rendered, "resource_link")) == 4
    assert "No room for inline images" in text_of(rendered)
    assert _conservative_tokens(rendered) <= 2_000


async def test_full_inlines_the_stored_png_when_it_fits(client: Client) -> None:
    result = await client.call_tool("generate_image", {"prompt": "a fox", "seed": 3, "delivery": "full"})
    assert not result.is_error, text_of(result)
    (image,) = _blocks(result, "image")
    assert image.mime_type == "image/png"
    uri = result.structured_content["images"][0]["uri"]  # type: ignore[index]
    assert base64.b64decode(image.data) == await read_png(client, uri)
    assert "do not fit" not in text_of(result)


async def test_path_gives_the_stored_png_path_in_text_and_structured_result(
    client: Client, tmp_path: Path
) -> None:
    result = await client.call_tool(
        "generate_image", {"prompt": "a fox", "seed": 3, "num_images": 2, "delivery": "path"}
    )
    assert not result.is_error, text_of(result)
    tool = next(t for t in (await client.list_tools()).tools if t.name == "generate_image")
    jsonschema.validate(result.structured_content, tool.output_schema)
    assert len(_blocks(result, "image")) == 2
    for ref in result.structured_content["images"]:  # type: ignore[index]
        path = Path(ref["path"])
        assert path.is_absolute() and path.is_relative_to((tmp_path / "store").absolute())
        assert _stored_png(path) == await read_png(client, ref["uri"])
        assert f"{ref['uri']} = {path}" in text_of(result)


async def test_none_sends_no_image_but_the_ids_and_links(client: Client) -> None:
    made = await client.call_tool("generate_image", {"prompt": "a fox", "seed": 3, "delivery": "none"})
    assert _blocks(made, "image") == []
    uri = made.structured_content["images"][0]["uri"]  # type: ignore[index]
    assert uri in text_of(made) and "Next:" in text_of(made)
    assert [link.uri for link in _blocks(made, "resource_link")] == [uri]

    compared = await client.call_tool(
        "compare_images", {"image_a": uri, "image_b": data_uri(photo("coffee", 64)), "delivery": "none"}
    )
    out = compared.structured_content
    assert _blocks(compared, "image") == []
    for key in ("image_a", "image_b", "diff_image"):
        assert out[key]["uri"] in text_of(compared)  # type: ignore[index]


async def test_the_configured_delivery_is_the_default_and_a_call_overrides_it(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path
) -> None:
    config = make_config(tmp_path, tiny_dir, allowed_root, delivery="none")
    async with Client(build_server(config, create_services(config, devices=cpu_only()))) as client:
        plain = await client.call_tool("generate_image", {"prompt": "a fox", "seed": 3})
        shown = await client.call_tool(
            "generate_image", {"prompt": "a fox", "seed": 3, "delivery": "preview"}
        )
    assert _blocks(plain, "image") == [] and len(_blocks(shown, "image")) == 1


async def test_delivery_is_an_argument_of_the_tools_that_show_images_only(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    with_delivery = {name for name, t in tools.items() if "delivery" in t.input_schema["properties"]}
    assert with_delivery == {"generate_image", "controlled_generate", "compare_images", "get_job"}
    assert set(tools["generate_image"].input_schema["properties"]["delivery"]["enum"]) == {
        "preview",
        "full",
        "none",
        "path",
        None,
    }
    message = await call_error(
        client, "clip_classify", {"image": data_uri(photo()), "labels": ["a", "b"], "delivery": "none"}
    )
    assert "unknown argument" in message and "delivery" in message
    message = await call_error(client, "generate_image", {"prompt": "x", "delivery": "thumbnail"})
    assert "delivery" in message
    await call_ok(client, "generate_image", {"prompt": "still serving", "seed": 1})


def test_client_limits_take_a_preset_name_or_a_table(tmp_path: Path) -> None:
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        '[server]\ndelivery = "path"\n'
        "[server.client_limits]\nmax_result_bytes = 200000\nmax_result_tokens = 8000\n"
    )
    config = load_config(profile="tiny", config_file=config_file, cache_dir=tmp_path, home=tmp_path)
    budget = config.server.client_budget()
    assert config.server.delivery == "path"
    assert budget.max_result_bytes == 200_000 and budget.max_result_tokens == 8_000
    assert budget.max_image_side == 8000

    preset = load_config(
        profile="tiny", cache_dir=tmp_path, home=tmp_path, overrides={"client_limits": "claude-code"}
    )
    assert preset.server.client_budget().max_result_tokens == 25_000
    with pytest.raises(ConfigError, match="client_limits"):
        load_config(profile="tiny", cache_dir=tmp_path, home=tmp_path, overrides={"client_limits": "cursor"})


def test_the_estimate_is_documented_as_it_is_computed() -> None:
    from multimodal_mcp.server.delivery import image_tokens, text_tokens

    assert text_tokens(3000) == 1000
    assert image_tokens(768, 768, 30) == math.ceil(768 * 768 / 750)  # tiny data: the vision cost
    assert image_tokens(64, 64, 30_000) == 10_000  # large data: counted as text
    assert json.loads(json.dumps(CLIENT_LIMITS["claude-code"].model_dump()))["max_result_tokens"] == 25_000


async def test_path_delivery_is_on_for_stdio_and_off_for_http_by_default(
    tmp_path: Path, tiny_dir: Path
) -> None:
    def loaded(transport: str) -> Any:
        return load_config(
            profile="tiny",
            config_file=None,
            cache_dir=tmp_path / "cache",
            home=tmp_path,
            overrides={"store_dir": tmp_path / "store", "tiny_dir": tiny_dir},
            transport=transport,  # type: ignore[arg-type]
        )

    assert loaded("stdio").server.path_delivery is True
    config = loaded("http")
    assert config.server.path_delivery is False
    server = build_server(config, create_services(config, devices=cpu_only()))
    async with Client(server) as client:
        arguments = {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": 1}
        error = await call_error(client, "generate_image", {**arguments, "delivery": "path"})
        assert "delivery='path' is off on this server" in error
        made = await call_ok(client, "generate_image", {**arguments, "delivery": "none"})
        assert "path" not in made["images"][0]
