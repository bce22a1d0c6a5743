"""The views as MCP Apps, without a browser: who sees which tools, the ui:// resources, and the tools
only views call (argument checks, ownership). tests/browser drives the views themselves."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from mcp import Client
from mcp.client.extension import advertise
from mcp.types import TextResourceContents
from PIL import Image

from multimodal_mcp.principals import acting_as
from multimodal_mcp.server.app import build_server
from multimodal_mcp.tools.common import Services
from multimodal_mcp.views import TOOL_VIEWS, VIEWS
from multimodal_mcp.views.actions import GalleryImagesParams, gallery_images

from helpers import call_error, call_ok, data_uri

APPS = advertise("io.modelcontextprotocol/ui", {"mimeTypes": ["text/html;profile=mcp-app"]})
MODEL_TOOLS = {
    "generate_image",
    "controlled_generate",
    "clip_classify",
    "describe_image",
    "compare_images",
    "list_models",
    "get_job",
    "cancel_job",
}


@pytest.fixture
async def plain(fake_services: Services) -> AsyncIterator[Client]:
    async with Client(build_server(fake_services.config, fake_services)) as client:
        yield client


@pytest.fixture
async def apps(fake_services: Services) -> AsyncIterator[Client]:
    async with Client(build_server(fake_services.config, fake_services), extensions=[APPS]) as client:
        yield client


async def test_a_client_without_apps_lists_the_same_eight_tools(plain: Client) -> None:
    assert {tool.name for tool in (await plain.list_tools()).tools} == MODEL_TOOLS


async def test_an_apps_client_also_gets_the_app_only_tools_marked_for_the_view_alone(apps: Client) -> None:
    tools = {tool.name: tool for tool in (await apps.list_tools()).tools}
    assert set(tools) == MODEL_TOOLS | {"gallery_images", "save_mask"}
    for name in ("gallery_images", "save_mask"):
        assert (tools[name].meta or {})["ui"]["visibility"] == ["app"]
    for name, view in TOOL_VIEWS.items():
        assert (tools[name].meta or {})["ui"] == {"resourceUri": view.uri, "visibility": ["model", "app"]}


async def test_views_are_self_contained_html_under_the_default_csp(apps: Client) -> None:
    listed = {str(resource.uri) for resource in (await apps.list_resources()).resources}
    for view in VIEWS:
        assert view.uri in listed
        (contents,) = (await apps.read_resource(view.uri)).contents
        assert isinstance(contents, TextResourceContents)
        assert contents.mime_type == "text/html;profile=mcp-app"
        html = contents.text
        assert "<!-- inline:" not in html and "const bridge" in html
        # Nothing loaded from elsewhere: no script or stylesheet by URL, no fonts, no remote images.
        assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|@font-face|url\(", html)
        assert not re.search(r"""(src|href)=["'](https?:)?//""", html)


async def test_tool_results_are_the_same_for_clients_with_and_without_apps(
    plain: Client, apps: Client
) -> None:
    arguments = {"prompt": "a red square", "seed": 3}
    without = await plain.call_tool("generate_image", arguments)
    with_apps = await apps.call_tool("generate_image", arguments)
    assert without.structured_content is not None and with_apps.structured_content is not None
    assert without.structured_content["images"] == with_apps.structured_content["images"]
    assert [block.type for block in without.content] == [block.type for block in with_apps.content]


async def test_save_mask_stores_a_black_and_white_mask_owned_by_the_caller(
    apps: Client, fake_services: Services
) -> None:
    image = (await call_ok(apps, "generate_image", {"prompt": "a red square", "seed": 3}))["images"][0]
    painted = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (0, 0, 16, 64))  # white on transparent: transparent is unpainted
    saved = await call_ok(apps, "save_mask", {"image": image["uri"], "mask": data_uri(painted)})
    assert saved["painted_fraction"] == 0.25
    record = fake_services.store.record(saved["mask"]["id"])
    assert record.parents == [image["id"]]
    mask = fake_services.store.open(saved["mask"]["id"]).convert("L")
    assert mask.getpixel((8, 30)) == 255 and mask.getpixel((40, 30)) == 0
    with acting_as("token:someone-else"), pytest.raises(Exception, match="no image with id"):
        fake_services.store.record(saved["mask"]["id"])


async def test_save_mask_refuses_a_mask_of_another_size_an_empty_one_and_unknown_arguments(
    apps: Client,
) -> None:
    image = (await call_ok(apps, "generate_image", {"prompt": "a red square", "seed": 3}))["images"][0]
    wrong = await call_error(
        apps, "save_mask", {"image": image["uri"], "mask": data_uri(Image.new("L", (32, 32), 255))}
    )
    assert "32x32 does not match the image's 64x64" in wrong
    empty = await call_error(
        apps, "save_mask", {"image": image["uri"], "mask": data_uri(Image.new("L", (64, 64), 0))}
    )
    assert "nothing is painted" in empty
    unknown = await call_error(apps, "save_mask", {"image": image["uri"], "mask": "x", "strength": 1})
    assert "unknown argument(s) 'strength'" in unknown


async def test_save_mask_cannot_reach_another_principals_image(apps: Client, fake_services: Services) -> None:
    with acting_as("token:someone-else"):
        theirs = fake_services.store.put(Image.new("RGB", (64, 64), "red"), kind="generated")
    error = await call_error(
        apps, "save_mask", {"image": theirs.uri, "mask": data_uri(Image.new("L", (64, 64), 255))}
    )
    assert f"no image with id {theirs.id}" in error


async def test_gallery_images_lists_only_the_callers_images_newest_first(fake_services: Services) -> None:
    store = fake_services.store
    with acting_as("token:alice"):
        first = store.put(Image.new("RGB", (32, 32), "red"), kind="generated", prompt="one", seed=1)
        second = store.put(Image.new("RGB", (32, 32), "blue"), kind="generated", prompt="two", seed=2)
        store.put(Image.new("RGB", (32, 32), "green"), kind="input")
    with acting_as("token:bob"):
        store.put(Image.new("RGB", (32, 32), "white"), kind="generated", prompt="bob's")
        bobs = await gallery_images(GalleryImagesParams(), fake_services)
    with acting_as("token:alice"):
        alices = await gallery_images(GalleryImagesParams(), fake_services)
        one = await gallery_images(GalleryImagesParams(limit=1), fake_services)
    assert [image.id for image in alices.images] == [second.id, first.id]
    assert [(image.prompt, image.seed) for image in alices.images] == [("two", 2), ("one", 1)]
    assert alices.images[0].thumbnail.startswith("data:image/jpeg;base64,")
    assert [image.prompt for image in bobs.images] == ["bob's"]
    assert [image.id for image in one.images] == [second.id]


async def test_gallery_images_checks_its_arguments_like_every_tool(apps: Client) -> None:
    too_many = await call_error(apps, "gallery_images", {"limit": 1000})
    assert "limit" in too_many and "48" in too_many
    wrong_kind = await call_error(apps, "gallery_images", {"kinds": ["everything"]})
    assert "kinds" in wrong_kind
