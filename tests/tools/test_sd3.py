"""Stable Diffusion 3 through the tools: the tiny SD3 (MMDiT, CLIP-L + CLIP-G + T5, flow matching)
and its canny ControlNet, built offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mcp import Client

from multimodal_mcp.backends.diffusion import architecture_of, backend
from multimodal_mcp.config import load_config

from helpers import call_error, call_ok, data_uri, open_png, photo, read_png


def test_the_default_profiles_sd35_medium_declares_sd3s_capabilities_before_loading(tmp_path: Path) -> None:
    config = load_config(profile="default", cache_dir=tmp_path / "cache", home=tmp_path)
    spec = config.models["sd35-medium"]
    assert spec.source == "stabilityai/stable-diffusion-3.5-medium" and architecture_of(spec) == "sd3"
    caps = backend.capabilities("sd35-medium", spec, config)
    assert caps.schedulers[0] == "flow_euler" and caps.sizes is not None and caps.sizes.multiple_of == 16
    assert caps.negative_prompt and caps.guidance_scale and caps.edit_modes == ("img2img", "inpaint")
    assert (spec.defaults.steps, spec.defaults.width, spec.defaults.scheduler) == (28, 1024, "flow_euler")


async def _pixels(client: Client, out: dict[str, Any]) -> np.ndarray:
    return np.asarray(open_png(await read_png(client, out["images"][0]["uri"])), dtype=int)


async def test_generate_image_runs_the_sd3_pipeline_with_its_flow_matching_defaults(client: Client) -> None:
    args = {"prompt": "a red cat", "model": "tiny-sd3", "seed": 7, "width": 96}
    out = await call_ok(client, "generate_image", args)
    assert out["parameters"]["scheduler"] == "flow_euler" and out["parameters"]["guidance_scale"] == 5.0
    assert (out["parameters"]["width"], out["parameters"]["height"]) == (96, 64)
    image = await _pixels(client, out)
    assert image.shape == (64, 96, 3) and image.std() > 1  # an image, not a flat fill
    again = await call_ok(client, "generate_image", args)
    assert (await _pixels(client, again) == image).all()
    other_seed = await call_ok(client, "generate_image", {**args, "seed": 8})
    assert np.abs(await _pixels(client, other_seed) - image).mean() > 1
    # SD3 takes negative prompts and every flow-matching scheduler.
    negative = await call_ok(client, "generate_image", {**args, "negative_prompt": "blue"})
    assert np.abs(await _pixels(client, negative) - image).mean() > 1
    for scheduler in ("flow_euler_karras", "flow_euler_sde"):
        await call_ok(client, "generate_image", {**args, "scheduler": scheduler})


async def test_sd3_refuses_what_its_architecture_does_not_take(client: Client) -> None:
    base = {"prompt": "a cat", "model": "tiny-sd3"}
    assert "multiple of 16" in await call_error(client, "generate_image", {**base, "width": 72})
    assert "flow_euler" in await call_error(client, "generate_image", {**base, "scheduler": "dpm++"})
    lora = await call_error(client, "generate_image", {**base, "loras": [{"name": "tiny-lora-ink"}]})
    assert "model 'tiny-sd3' has no LoRA named 'tiny-lora-ink'; its LoRAs: tiny-lora-sd3" in lora


async def test_the_t5_encoder_reads_256_tokens_and_the_result_says_what_it_left_out(client: Client) -> None:
    words = ("red blue green cat dog tree house car sun moon " * 30).split()  # one token each
    out = await call_ok(client, "generate_image", {"prompt": " ".join(words), "model": "tiny-sd3", "seed": 1})
    notes = {n["message"].split(" tokens for ")[1].split(",")[0]: n for n in out["adjustments"]}
    # SD3's max_sequence_length (256, EOS included), counted with its own T5 tokenizer.
    t5 = notes["text_encoder_3 (T5)"]
    assert "which reads the first 255" in t5["message"] and t5["dropped"] == " ".join(words[255:])
    clip = notes["text_encoder (CLIP) and text_encoder_2 (CLIP)"]
    assert "which read the first 75" in clip["message"]
    assert " ".join(words).endswith(clip["dropped"]) and len(clip["dropped"]) > len(t5["dropped"])


async def test_controlled_generate_steers_sd3_with_its_controlnet(client: Client) -> None:
    building = photo(size=64)
    base = {"prompt": "a tower", "model": "tiny-sd3", "seed": 5}
    steered = await call_ok(client, "controlled_generate", {**base, "control_image": data_uri(building)})
    assert steered["controls"][0]["controlnet"] == "tiny-controlnet-canny-sd3"
    plain = await call_ok(client, "generate_image", base)
    assert np.abs(await _pixels(client, steered) - await _pixels(client, plain)).mean() > 1
    other = await call_ok(
        client, "controlled_generate", {**base, "control_image": data_uri(building.transpose(0))}
    )
    assert np.abs(await _pixels(client, other) - await _pixels(client, steered)).mean() > 1


async def test_sd3_edits_a_picture_with_img2img_and_inpainting(client: Client) -> None:
    picture = data_uri(photo(size=64))
    base = {"prompt": "a tower", "model": "tiny-sd3", "seed": 5, "init_image": picture, "strength": 0.5}
    img2img = await call_ok(client, "controlled_generate", {**base, "steps": 4})
    assert img2img["mode"] == "img2img"
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    from PIL import Image

    inpaint = await call_ok(
        client, "controlled_generate", {**base, "mask_image": data_uri(Image.fromarray(mask, "L"))}
    )
    assert inpaint["mode"] == "inpaint"
    source = np.asarray(photo(size=64).convert("RGB"), dtype=int)
    assert (await _pixels(client, inpaint))[mask == 0].tolist() == source[mask == 0].tolist()
    # Two of the three steps run at strength 0.5 (flow matching keeps steps - int(steps * 0.5)).
    few = await call_ok(client, "controlled_generate", {**base, "steps": 3})
    (note,) = [a for a in few["adjustments"] if a["argument"] == "steps"]
    assert note["message"].startswith("2 of the 3 denoising steps ran")


async def test_sd3_controlnet_with_an_edit_is_refused_naming_the_families_that_combine_them(
    client: Client,
) -> None:
    picture = data_uri(photo(size=64))
    args = {"prompt": "a tower", "model": "tiny-sd3", "control_image": picture, "init_image": picture}
    message = await call_error(client, "controlled_generate", args)
    assert "model 'tiny-sd3' (sd3) cannot do control with img2img" in message
    assert "model families that can: flux, sd, sdxl" in message
