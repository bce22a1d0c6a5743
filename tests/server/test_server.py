from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp import Client, MCPError
from PIL import Image

from multimodal_mcp.config import Config
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.tools.common import Services

from helpers import call_error, call_ok, cpu_only, data_uri, open_png, photo, read_png


async def test_the_server_lists_its_tools_with_output_schemas_and_honest_annotations(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {
        "generate_image",
        "controlled_generate",
        "clip_classify",
        "describe_image",
        "compare_images",
        "list_models",
        "get_job",
        "cancel_job",
    }
    for tool in tools.values():
        assert tool.output_schema is not None and tool.description
        assert tool.annotations is not None and tool.annotations.open_world_hint is False
    assert {name for name, t in tools.items() if t.annotations.read_only_hint} == {
        "clip_classify",
        "describe_image",
        "compare_images",
        "list_models",
        "get_job",
    }
    for name in (
        "generate_image",
        "controlled_generate",
        "clip_classify",
        "describe_image",
        "compare_images",
    ):
        schema = tools[name].output_schema
        assert schema["type"] == "object" and len(schema["anyOf"]) == 2  # the result, or a job handle
    templates = (await client.list_resource_templates()).resource_templates
    assert [(t.uri_template, t.mime_type) for t in templates] == [("image://{image_id}", "image/*")]


async def test_any_image_passed_in_can_be_read_back_as_a_resource(client: Client) -> None:
    original = photo("chelsea", 40)
    out = await call_ok(client, "clip_classify", {"image": data_uri(original), "labels": ["a", "b"]})
    assert open_png(await read_png(client, out["image"]["uri"])).tobytes() == original.tobytes()


async def test_an_input_reads_back_in_its_own_format_with_its_own_mime_type(fake_services: Services) -> None:
    import base64
    import io

    from mcp.types import BlobResourceContents

    original = photo("chelsea", 40)
    exif = Image.Exif()
    exif[0x010E] = "private"
    async with Client(build_server(fake_services.config, fake_services)) as client:
        for fmt, mime in (("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("PNG", "image/png")):
            buf = io.BytesIO()
            original.save(buf, format=fmt, exif=exif.tobytes())
            sent = f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"
            uri = (await call_ok(client, "describe_image", {"image": sent}))["image"]["uri"]
            contents = (await client.read_resource(uri)).contents
            assert len(contents) == 1 and isinstance(contents[0], BlobResourceContents)
            assert contents[0].mime_type == mime
            data = base64.b64decode(contents[0].blob)
            assert (data, mime) == fake_services.store.read_bytes(uri.removeprefix("image://"))
            assert b"private" in buf.getvalue() and b"private" not in data
            with Image.open(io.BytesIO(data)) as back, Image.open(io.BytesIO(buf.getvalue())) as sent_image:
                assert back.convert("RGB").tobytes() == sent_image.convert("RGB").tobytes()


async def test_reading_an_unknown_or_malformed_image_resource_is_an_error(client: Client) -> None:
    for uri in ("image://0123456789abcdef", "image://not-an-id"):
        with pytest.raises(MCPError):
            await client.read_resource(uri)
    await call_ok(client, "list_models", {})


async def test_image_ids_survive_a_server_restart_on_the_same_store(config: Config) -> None:
    async with Client(build_server(config, create_services(config, cpu_only()))) as first:
        made = await call_ok(first, "generate_image", {"prompt": "a bridge", "seed": 8})
        uri = made["images"][0]["uri"]
        png = await read_png(first, uri)
    async with Client(build_server(config, create_services(config, cpu_only()))) as second:
        assert await read_png(second, uri) == png
        out = await call_ok(second, "compare_images", {"image_a": uri, "image_b": uri})
        assert out["ssim"] == 1.0


async def test_an_unexpected_failure_is_reported_without_internals(
    client: Client, services, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    async with services.pool.use("tiny-sd15") as model:
        pass

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret path /home/user/.cache/key=sk-123")

    monkeypatch.setattr(model, "generate", broken)
    message = await call_error(client, "generate_image", {"prompt": "x"})
    assert "internal error (id " in message
    assert "secret" not in message and "Traceback" not in message and "sk-123" not in message
    monkeypatch.undo()
    await call_ok(client, "generate_image", {"prompt": "x", "seed": 1})


async def test_bad_inputs_are_tool_errors_and_the_next_call_works(client: Client, allowed_root: Path) -> None:
    cases = [
        ("clip_classify", {"image": "data:image/png;base64,!!!!", "labels": ["a", "b"]}, "not valid base64"),
        ("clip_classify", {"image": "/etc/passwd", "labels": ["a", "b"]}, "outside the directories"),
        ("describe_image", {"image": "image://ffffffffffffffff"}, "no image with id"),
        (
            "compare_images",
            {"image_a": "https://example.com/a.png", "image_b": "x"},
            "fetching URLs is turned off",
        ),
        ("generate_image", {"prompt": "x", "model": "nope"}, "no model named 'nope'"),
        ("clip_classify", {"image": str(allowed_root / "missing.png"), "labels": ["a", "b"]}, "no such file"),
    ]
    for tool, args, expected in cases:
        message = await call_error(client, tool, args)
        assert expected in message, message
    await call_ok(client, "describe_image", {"image": data_uri(photo("coffee", 32))})


async def test_models_load_once_however_many_calls_use_them(client: Client, services) -> None:  # type: ignore[no-untyped-def]
    image = data_uri(photo("coffee", 32))
    for _ in range(3):
        await call_ok(client, "generate_image", {"prompt": "x", "seed": 1})
        await call_ok(client, "controlled_generate", {"prompt": "x", "control_image": image, "seed": 1})
    assert services.pool.load_counts["tiny-sd15"] == 1
    assert services.pool.load_counts["tiny-controlnet-canny"] == 1


async def test_pool_status_resource_shows_budgets_models_and_counters(client: Client) -> None:
    await call_ok(client, "generate_image", {"prompt": "x", "seed": 1})
    contents = (await client.read_resource("pool://status")).contents
    status = json.loads(contents[0].text)
    (device,) = status["devices"]
    assert device["name"] == "cpu" and device["budget_bytes"] == 8 * 1024**3
    assert device["used_bytes"] > 0 and device["calls_served"] >= 1
    models = {m["name"]: m for m in status["models"]}
    assert models["tiny-sd15"]["loaded"] and models["tiny-sd15"]["location"] == "cpu"
    assert not models["tiny-vlm"]["loaded"]
    assert status["counters"]["misses"] >= 1


async def test_list_models_shows_location_size_and_queue(client: Client) -> None:
    await call_ok(client, "clip_classify", {"image": data_uri(photo("coffee", 32)), "labels": ["a", "b"]})
    models = {m["name"]: m for m in (await call_ok(client, "list_models", {}))["models"]}
    clip = models["tiny-clip"]
    assert clip["loaded"] and clip["location"] == "cpu" and clip["device"] == "cpu"
    assert clip["memory_bytes"] > 0 and clip["queue_depth"] == 0 and clip["in_use"] == 0
    assert clip["last_used_seconds_ago"] is not None


async def test_cancelling_a_generation_through_mcp_stops_it_and_the_next_call_works(
    client: Client,
    services,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    async with services.pool.use("tiny-sd15") as model:
        pass
    steps_run: list[int] = []
    original = model.generate

    def counting_generate(request, on_step, cancel):  # type: ignore[no-untyped-def]
        def count(step: int, total: int) -> None:
            steps_run.append(step)
            on_step(step, total)

        return original(request, count, cancel)

    monkeypatch.setattr(model, "generate", counting_generate)
    first_step = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if progress >= 1:
            first_step.set()

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: client.call_tool(
                    "generate_image", {"prompt": "x", "steps": 100, "seed": 1}, progress_callback=on_progress
                )
            )
            with anyio.fail_after(30):
                await first_step.wait()
            scope.cancel()
    assert 1 <= len(steps_run) < 100
    with anyio.fail_after(30):
        await call_ok(client, "generate_image", {"prompt": "after", "seed": 1})
