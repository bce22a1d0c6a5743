"""Backends from another package: the test distribution in tests/plugins registers a local painter and
a hosted echo VLM through entry points, and the server serves them through its ordinary tools."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from multimodal_mcp import registry
from multimodal_mcp.config import ConfigError, load_config
from multimodal_mcp.server.app import build_server
from multimodal_mcp.tools.common import Services

from fake_providers import FakeProvider
from helpers import call_error, call_ok, data_uri, open_png, photo, read_png, text_of

pytestmark = pytest.mark.anyio  # marked at collection, so that parametrized tests keep their ids


def test_the_registry_finds_the_plugins_through_their_entry_points(plugins: Path) -> None:
    found = registry.backends()
    assert {"painter", "echo", "diffusers", "transformers", "openai", "gemini"} <= set(found)
    assert isinstance(found["painter"], registry.LocalBackend)
    assert isinstance(found["echo"], registry.HostedBackend) and found["echo"].name == "echo"


def test_without_the_plugin_a_backend_name_is_refused_naming_the_registered_ones(tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text("[models.p]\ntask = 'text_to_image'\nbackend = 'painter'\nsource = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(profile="tiny", config_file=config_file, cache_dir=tmp_path, home=tmp_path)
    message = str(info.value)
    assert "no backend named 'painter' is registered" in message and "diffusers" in message
    assert "multimodal_mcp.backends" in message


async def test_generate_image_serves_a_plugin_model_with_its_capabilities(
    contract_services: Services,
) -> None:
    server = build_server(contract_services.config, contract_services)
    async with Client(server) as client:
        out = await call_ok(
            client, "generate_image", {"prompt": "a gradient", "model": "painter", "seed": 9, "num_images": 2}
        )
        assert [i["seed"] for i in out["images"]] == [9, 10]
        assert out["parameters"]["steps"] == 2 and out["parameters"]["scheduler"] is None
        image = open_png(await read_png(client, out["images"][0]["uri"]))
        assert image.size == (64, 64)
        again = await call_ok(
            client, "generate_image", {"prompt": "a gradient", "model": "painter", "seed": 9}
        )
        repeated = open_png(await read_png(client, again["images"][0]["uri"]))
        assert repeated.tobytes() == image.tobytes()  # the same seed paints the same pixels
        # What the painter does not declare is refused, naming the models that take it.
        message = await call_error(
            client, "generate_image", {"prompt": "x", "model": "painter", "negative_prompt": "blur"}
        )
        assert "model 'painter' does not take `negative_prompt`; models that do: tiny-sd15" in message
        listed = await call_ok(client, "list_models", {})
        painter = next(m for m in listed["models"] if m["name"] == "painter")
        assert painter["backend"] == "painter" and painter["capabilities"]["seed"] is True
        assert painter["capabilities"]["sizes"] == {
            "multiple_of": 8,
            "fixed": [],
            "max_side": 512,
            "labels": [],
        }


async def test_a_hosted_plugin_answers_describe_and_compare_with_every_image_in_one_request(
    contract_services: Services, echo_fake: FakeProvider
) -> None:
    server = build_server(contract_services.config, contract_services)
    a, b = data_uri(photo("coffee", 48)), data_uri(photo("chelsea", 48))
    async with Client(server) as client:
        described = await call_ok(
            client, "describe_image", {"image": a, "model": "echo-vlm", "prompt": "What is this?"}
        )
        assert described["text"] == "1 image(s) seen; asked: What is this?"
        compared = await client.call_tool(
            "compare_images", {"image_a": a, "image_b": b, "describe": True, "model": "echo-vlm"}
        )
        assert not compared.is_error, text_of(compared)
    sent = [r.json for r in echo_fake.requests]
    assert len(sent) == 2 and len(sent[1]["images"]) == 2  # both pictures, not a side-by-side composite
    assert echo_fake.requests[0].headers["authorization"] == "Bearer echo-test-0123456789"
