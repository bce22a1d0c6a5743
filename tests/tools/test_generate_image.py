from __future__ import annotations

import base64
import io

import jsonschema
import numpy as np
from mcp import Client
from PIL import Image

from multimodal_mcp.server.registration import MultimodalServer

from helpers import call_error, call_ok, open_png, read_png, text_of


async def test_generate_image_returns_stored_images_matching_the_output_schema(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    result = await client.call_tool("generate_image", {"prompt": "a lighthouse at dusk", "seed": 5})
    assert not result.is_error, text_of(result)
    jsonschema.validate(result.structured_content, tools["generate_image"].output_schema)
    out = result.structured_content
    assert out["model"] == "tiny-sd15" and out["seed"] == 5
    assert out["parameters"] == {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": None,
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance_scale": 7.5,
        "scheduler": "dpm++",
        "num_images": 1,
        "loras": None,  # no LoRAs applied
    }
    (image,) = out["images"]
    assert image["uri"] == f"image://{image['id']}" and (image["width"], image["height"]) == (64, 64)
    assert open_png(await read_png(client, image["uri"])).size == (64, 64)
    kinds = [block.type for block in result.content]
    assert kinds == ["text", "image", "resource_link"]
    assert image["uri"] in text_of(result)


async def test_same_seed_and_arguments_give_the_same_image_bytes(client: Client) -> None:
    args = {"prompt": "a red fox", "negative_prompt": "blurry", "seed": 1234, "scheduler": "euler_a"}
    first = await call_ok(client, "generate_image", args)
    second = await call_ok(client, "generate_image", args)
    assert first["images"][0]["id"] == second["images"][0]["id"]  # ids are content addresses
    a = await read_png(client, first["images"][0]["uri"])
    b = await read_png(client, second["images"][0]["uri"])
    assert a == b
    other = await call_ok(client, "generate_image", {**args, "seed": 1235})
    assert await read_png(client, other["images"][0]["uri"]) != a


async def test_a_missing_seed_is_drawn_and_reproduces_the_image(client: Client) -> None:
    drawn = await call_ok(client, "generate_image", {"prompt": "a boat"})
    assert isinstance(drawn["seed"], int)
    again = await call_ok(client, "generate_image", {"prompt": "a boat", "seed": drawn["seed"]})
    assert await read_png(client, drawn["images"][0]["uri"]) == await read_png(
        client, again["images"][0]["uri"]
    )


async def test_each_of_several_images_is_reproducible_from_its_own_seed(client: Client) -> None:
    batch = await call_ok(client, "generate_image", {"prompt": "a kite", "seed": 40, "num_images": 3})
    assert [img["seed"] for img in batch["images"]] == [40, 41, 42]
    single = await call_ok(client, "generate_image", {"prompt": "a kite", "seed": 41})
    batched = np.asarray(open_png(await read_png(client, batch["images"][1]["uri"])), dtype=int)
    alone = np.asarray(open_png(await read_png(client, single["images"][0]["uri"])), dtype=int)
    # Same composition; batched matrix products may round a few pixel values by one level.
    assert np.abs(batched - alone).max() <= 2
    assert len({await read_png(client, img["uri"]) for img in batch["images"]}) == 3


async def test_sdxl_and_flux_architectures_generate_through_the_same_tool(client: Client) -> None:
    sdxl = await call_ok(
        client, "generate_image", {"prompt": "a cat", "model": "tiny-sdxl", "width": 96, "seed": 1}
    )
    assert (sdxl["parameters"]["width"], sdxl["parameters"]["height"]) == (96, 64)
    assert open_png(await read_png(client, sdxl["images"][0]["uri"])).size == (96, 64)
    flux = await call_ok(client, "generate_image", {"prompt": "a cat", "model": "tiny-flux", "seed": 1})
    assert flux["parameters"]["scheduler"] == "flow_euler" and flux["parameters"]["guidance_scale"] == 0.0
    for scheduler in ("flow_euler_karras", "flow_euler_sde"):
        await call_ok(
            client, "generate_image", {"prompt": "a cat", "model": "tiny-flux", "scheduler": scheduler}
        )


async def test_every_named_diffusion_scheduler_runs_and_changes_the_image(client: Client) -> None:
    outputs = set()
    for scheduler in ("dpm++", "dpm++_karras", "euler", "euler_a", "heun", "ddim", "unipc", "pndm"):
        out = await call_ok(client, "generate_image", {"prompt": "a tree", "seed": 3, "scheduler": scheduler})
        assert out["parameters"]["scheduler"] == scheduler
        outputs.add(await read_png(client, out["images"][0]["uri"]))
    assert len(outputs) >= 6  # samplers differ; a couple may coincide at 2 steps


async def test_generation_parameters_are_embedded_in_the_png(client: Client) -> None:
    out = await call_ok(client, "generate_image", {"prompt": "a mill", "negative_prompt": "fog", "seed": 9})
    png = open_png(await read_png(client, out["images"][0]["uri"]))
    assert png.info["parameters"].startswith("a mill\nNegative prompt: fog\n")
    assert "Seed: 9" in png.info["parameters"] and "Model: tiny-sd15" in png.info["parameters"]


async def test_progress_notifications_report_steps_in_order_with_the_last_one(client: Client) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    await client.call_tool(
        "generate_image", {"prompt": "a bee", "steps": 3, "seed": 0}, progress_callback=on_progress
    )
    # Rate-limited: the first and the last step always arrive, in order, with the total.
    steps = [p for p, _, _ in seen]
    assert steps[0] == 1 and steps[-1] == 3 and steps == sorted(set(steps))
    assert {t for _, t, _ in seen} == {3}
    assert seen[-1][2] == "tiny-sd15: step 3/3"


async def test_previews_of_four_large_images_keep_the_result_under_one_mebibyte(client: Client) -> None:
    result = await client.call_tool(
        "generate_image",
        {"prompt": "noise", "width": 512, "height": 512, "num_images": 4, "steps": 1, "seed": 1},
    )
    assert not result.is_error, text_of(result)
    assert len(result.model_dump_json(by_alias=True)) < 1024 * 1024
    previews = [block for block in result.content if block.type == "image"]
    assert len(previews) == 4
    for block in previews:
        img = Image.open(io.BytesIO(base64.b64decode(block.data)))
        assert img.format == "JPEG" and block.mime_type == "image/jpeg"
        assert max(img.size) <= 512


async def test_bad_arguments_are_tool_errors_and_the_server_keeps_serving(client: Client) -> None:
    cases = {
        "width": ({"prompt": "x", "width": 8192}, "width"),
        "limit": ({"prompt": "x", "width": 4096}, "limit of 2048"),
        "unknown model": ({"prompt": "x", "model": "sd99"}, "no model named 'sd99'"),
        "wrong task": ({"prompt": "x", "model": "tiny-clip"}, "needs a text_to_image model"),
        "multiple": ({"prompt": "x", "model": "tiny-flux", "width": 72}, "multiple of 16"),
        "family": ({"prompt": "x", "model": "tiny-flux", "scheduler": "dpm++"}, "flow_euler"),
        "negative": ({"prompt": "x", "model": "tiny-flux", "negative_prompt": "y"}, "negative"),
        "empty prompt": ({"prompt": ""}, "prompt"),
        "extra": ({"prompt": "x", "sampler": "euler"}, "sampler"),
        "images": ({"prompt": "x", "num_images": 9}, "limit of 4"),
    }
    for name, (args, expected) in cases.items():
        message = await call_error(client, "generate_image", args)
        assert expected in message, (name, message)
        assert "Traceback" not in message and "pydantic.dev" not in message
    await call_ok(client, "generate_image", {"prompt": "still serving", "seed": 1})


async def test_tool_schema_derives_bounds_and_descriptions_from_the_params_model(
    server: MultimodalServer,
) -> None:
    async with Client(server) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == "generate_image")
    props = tool.input_schema["properties"]
    assert tool.input_schema["required"] == ["prompt"]
    assert props["steps"]["type"] == ["integer", "null"]
    assert (props["steps"]["minimum"], props["steps"]["maximum"]) == (1, 200)
    assert props["scheduler"]["type"] == ["string", "null"]  # the names: per model, in list_models
    assert props["seed"]["description"] == "Omit for a random one; reuse it to repeat an image."
    assert tool.output_schema is not None and tool.output_schema["type"] == "object"
    result_schema = tool.output_schema["$defs"]["GenerateImageResult"]
    assert {"images", "seed", "model", "parameters", "timings"} <= set(result_schema["required"])
    assert tool.annotations is not None and tool.annotations.read_only_hint is False
    assert "image://" in (tool.description or "")


# --- nothing changes silently ----------------------------------------------------------------------

# Words the tiny tokenizers hold whole: one token each, so the text encoders' windows count words.
_FILLER = "a small red house with a blue car near the sea and a white horse on the road " * 6
_PROMPT_A, _PROMPT_B = _FILLER + "under the sky", _FILLER + "at the city"


def _pixels(png: bytes) -> bytes:
    return open_png(png).convert("RGB").tobytes()


def _notes(out: dict, argument: str) -> list[dict]:  # type: ignore[type-arg]
    return [a for a in out["adjustments"] if a["argument"] == argument]


async def test_each_text_encoder_reports_its_own_window(client: Client) -> None:
    # (SD 1.5 and SDXL encode long prompts whole: tests/backends/test_prompt_encoding.py; with
    # prompt_weighting = false they cut them, named together: there too.)
    words = _PROMPT_A.split()
    flux = await call_ok(client, "generate_image", {"prompt": _PROMPT_A, "model": "tiny-flux", "seed": 1})
    cuts = {c["message"].split(" tokens for ")[1].split(",")[0]: c["dropped"] for c in _notes(flux, "prompt")}
    # CLIP reads 75 words; the T5 encoder reads max_sequence_length=32 tokens (the config's), EOS included.
    assert cuts == {"text_encoder (CLIP)": " ".join(words[75:]), "text_encoder_2 (T5)": " ".join(words[31:])}


async def test_guidance_up_to_one_turns_guidance_off_and_the_result_says_what_it_did_not_use(
    client: Client,
) -> None:
    base = {"prompt": "a lighthouse", "seed": 2, "guidance_scale": 1.0}
    plain = await call_ok(client, "generate_image", base)
    negative = await call_ok(client, "generate_image", {**base, "negative_prompt": "fog"})
    image = _pixels(await read_png(client, plain["images"][0]["uri"]))
    assert (
        _pixels(await read_png(client, negative["images"][0]["uri"])) == image
    )  # the negative prompt changed nothing
    assert (
        "negative_prompt was not used: guidance_scale=1.0"
        in _notes(negative, "negative_prompt")[0]["message"]
    )
    lower = await call_ok(client, "generate_image", {**base, "guidance_scale": 0.5})
    assert _pixels(await read_png(client, lower["images"][0]["uri"])) == image  # 0.5 acts as 1
    assert "guidance_scale=0.5 acts as 1" in _notes(lower, "guidance_scale")[0]["message"]
    assert plain["adjustments"] == []
    flux = {"prompt": "a lighthouse", "seed": 2, "model": "tiny-flux"}
    unguided = await call_ok(client, "generate_image", flux)
    ignored = await call_ok(client, "generate_image", {**flux, "guidance_scale": 3.5})
    assert _pixels(await read_png(client, ignored["images"][0]["uri"])) == _pixels(
        await read_png(client, unguided["images"][0]["uri"])
    )  # no guidance embedding in this Flux: the value changes nothing, and the result says so
    assert "has no guidance embedding" in _notes(ignored, "guidance_scale")[0]["message"]
    guided = await call_ok(
        client, "generate_image", {**base, "guidance_scale": 3.0, "negative_prompt": "fog"}
    )
    assert (
        guided["adjustments"] == [] and _pixels(await read_png(client, guided["images"][0]["uri"])) != image
    )
