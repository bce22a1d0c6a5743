"""ComfyUI workflow templates against a loopback fake of ComfyUI's HTTP and websocket API."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client
from PIL import Image

from fake_comfyui import ComfyFake
from multimodal_mcp.config import Config
from multimodal_mcp.errors import ProviderError
from multimodal_mcp.handles import ImageRequest
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.tools.common import Services

from fake_providers import hosted_config
from helpers import call_error, call_ok, cpu_only, data_uri, open_png, photo, read_png

pytest.importorskip("websockets")

TEXT_TO_IMAGE = {
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": "{{seed}}",
            "steps": "{{steps}}",
            "cfg": "{{cfg}}",
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1},
    },
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative}}", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mmcp", "images": ["8", 0]}},
}
INPAINT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "steps": 4, "denoise": "{{denoise}}"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}"}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "{{init_image}}"}},
    "11": {"class_type": "LoadImageMask", "inputs": {"image": "{{mask}}", "channel": "red"}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mmcp", "images": ["8", 0]}},
}


@pytest.fixture
def comfy() -> Iterator[ComfyFake]:
    fake = ComfyFake()
    yield fake
    fake.stop()


def comfy_models(tmp_path: Path, url: str) -> str:
    """Config tables for a ComfyUI server at ``url`` with a text-to-image and an inpainting template."""
    (tmp_path / "sdxl.json").write_text(json.dumps(TEXT_TO_IMAGE))
    (tmp_path / "inpaint.json").write_text(json.dumps(INPAINT))
    return f"""
[hosted.comfyui]
base_url = "{url}"

[models.comfy-sdxl]
task = "text_to_image"
backend = "comfyui"
source = "{tmp_path / "sdxl.json"}"
defaults = {{ steps = 3, width = 64, height = 48 }}

[models.comfy-inpaint]
task = "text_to_image"
backend = "comfyui"
source = "{tmp_path / "inpaint.json"}"
"""


@pytest.fixture
def comfy_config(tmp_path: Path, allowed_root: Path, comfy: ComfyFake) -> Config:
    return hosted_config(
        tmp_path,
        tmp_path / "no-tiny-models",
        allowed_root,
        openai_url="http://127.0.0.1:9/v1",
        gemini_url="http://127.0.0.1:9/",
        extra_toml=comfy_models(tmp_path, comfy.url),
    )


@pytest.fixture
def comfy_services(comfy_config: Config) -> Services:
    return create_services(comfy_config, devices=cpu_only())


def test_capabilities_come_from_the_templates_placeholders(comfy_services: Services) -> None:
    hub = comfy_services.hub
    sdxl, inpaint = hub.capabilities("comfy-sdxl"), hub.capabilities("comfy-inpaint")
    assert (sdxl.seed, sdxl.steps, sdxl.guidance_scale, sdxl.negative_prompt) == (True, True, True, True)
    assert sdxl.sizes is not None and sdxl.sizes.multiple_of == 8 and sdxl.edit_modes == ()
    assert inpaint.edit_modes == ("img2img", "inpaint") and inpaint.strength and not inpaint.steps
    assert inpaint.sizes is None
    assert not comfy_services.config.models["comfy-sdxl"].is_paid


async def test_generate_image_fills_the_template_and_stores_the_output(
    comfy_services: Services, comfy: ComfyFake
) -> None:
    async with Client(build_server(comfy_services.config, comfy_services)) as client:
        out = await call_ok(
            client,
            "generate_image",
            {
                "prompt": "a red fox",
                "negative_prompt": "blurry",
                "model": "comfy-sdxl",
                "seed": 77,
                "guidance_scale": 4.5,
            },
        )
        png = await read_png(client, out["images"][0]["uri"])
    (graph,) = comfy.graphs
    assert graph["6"]["inputs"]["text"] == "a red fox" and graph["7"]["inputs"]["text"] == "blurry"
    sampler = graph["3"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (77, 3, 4.5)
    assert (graph["5"]["inputs"]["width"], graph["5"]["inputs"]["height"]) == (64, 48)
    assert graph["4"] == TEXT_TO_IMAGE["4"]  # what the template fixes is sent as it is
    image = open_png(png)
    assert image.size == (64, 48) and image.convert("RGB").getpixel((0, 0)) == (77, 90, 30)
    assert out["seed"] == 77 and out["usage"] is None
    ws = [r for r in comfy.requests if r[1] == "/ws"]
    prompt = next(r for r in comfy.requests if r[1] == "/prompt")
    assert len(ws) == 1 and ws[0][2]["clientId"] == prompt[2]["client_id"]  # listened before queueing
    assert [r[1] for r in comfy.requests if r[0] == "GET" and r[1] != "/ws"] == [
        f"/history/{next(iter(comfy.history))}",
        "/view",
    ]


async def test_steps_stream_from_the_websocket_into_progress(comfy_services: Services) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, total, message))

    request = ImageRequest(prompt="a fox", width=32, height=32, steps=4, guidance_scale=5.0, seeds=(1,))
    try:
        made = await comfy_services.hub.image_generator("comfy-sdxl").generate(request, progress=progress)
    finally:
        await comfy_services.hub.aclose()
    assert seen == [(1.0, 4.0, "step"), (2.0, 4.0, "step"), (3.0, 4.0, "step"), (4.0, 4.0, "step")]
    assert made.images[0].size == (32, 32) and made.sent["steps"] == 4


async def test_inpainting_uploads_the_picture_and_an_l_mask(
    comfy_services: Services, comfy: ComfyFake
) -> None:
    init = photo("astronaut", 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    request = ImageRequest(prompt="a helmet", init_image=init, mask_image=mask, strength=0.6, seeds=(3,))
    try:
        await comfy_services.hub.image_generator("comfy-inpaint").generate(request)
    finally:
        await comfy_services.hub.aclose()
    (graph,) = comfy.graphs
    init_name, mask_name = graph["10"]["inputs"]["image"], graph["11"]["inputs"]["image"]
    assert Image.open(io.BytesIO(comfy.uploads[init_name])).convert("RGB").tobytes() == init.tobytes()
    uploaded_mask = Image.open(io.BytesIO(comfy.uploads[mask_name]))
    assert uploaded_mask.mode == "L" and uploaded_mask.tobytes() == mask.tobytes()
    assert graph["3"]["inputs"]["denoise"] == 0.6 and graph["11"]["inputs"]["channel"] == "red"


async def test_a_cancelled_call_interrupts_the_prompt(comfy_services: Services, comfy: ComfyFake) -> None:
    comfy.hold = True
    started = anyio.Event()

    async def progress(done: float, total: float | None, message: str | None) -> None:
        started.set()

    request = ImageRequest(prompt="a fox", width=32, height=32, steps=50, guidance_scale=5.0, seeds=(1,))
    generator = comfy_services.hub.image_generator("comfy-sdxl")
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: generator.generate(request, progress=progress))
            with anyio.fail_after(10):
                await started.wait()
            tg.cancel_scope.cancel()
    finally:
        await comfy_services.hub.aclose()
    interrupts = [r for r in comfy.requests if r[1] == "/interrupt"]
    assert interrupts == [("POST", "/interrupt", {"prompt_id": comfy.prompt_ids[0]})]
    assert comfy.history == {}  # it never finished


async def test_a_rejected_workflow_names_the_node_errors(comfy_services: Services, comfy: ComfyFake) -> None:
    comfy.reject = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
        "node_errors": {"4": {"errors": [{"message": "Value not in list: ckpt_name"}]}},
    }
    async with Client(build_server(comfy_services.config, comfy_services)) as client:
        message = await call_error(client, "generate_image", {"prompt": "a fox", "model": "comfy-sdxl"})
        refused = await call_error(
            client,
            "controlled_generate",
            {"prompt": "a fox", "model": "comfy-sdxl", "init_image": data_uri(photo())},
        )
    assert "ComfyUI at" in message and "refused the workflow (HTTP 400)" in message
    assert "Prompt outputs failed validation" in message and "Value not in list: ckpt_name" in message
    assert "model 'comfy-sdxl' does not take `init_image`" in refused and "comfy-inpaint" in refused


def test_a_template_without_a_prompt_or_with_an_unknown_placeholder_is_refused(tmp_path: Path) -> None:
    from multimodal_mcp.backends.comfyui_backend import read_template
    from multimodal_mcp.errors import BackendError

    no_prompt = tmp_path / "a.json"
    no_prompt.write_text(json.dumps({"1": {"class_type": "X", "inputs": {"seed": "{{seed}}"}}}))
    with pytest.raises(BackendError, match="has no \\{\\{prompt\\}\\} input"):
        read_template(str(no_prompt))
    unknown = tmp_path / "b.json"
    unknown.write_text(json.dumps({"1": {"class_type": "X", "inputs": {"t": "{{prompt}}", "l": "{{lora}}"}}}))
    with pytest.raises(
        BackendError, match=r"placeholders with no value: \['lora'\]; set them in the model's"
    ):
        read_template(str(unknown))
    assert read_template(str(unknown), {"lora": "a.safetensors"})["1"]["inputs"]["l"] == "{{lora}}"
    with pytest.raises(BackendError, match=r"pipeline_kwargs \['seed'\] .* are filled per call"):
        read_template(str(unknown), {"lora": "a.safetensors", "seed": 3})
    assert not issubclass(BackendError, ProviderError)


async def test_controlled_generate_runs_an_inpainting_template_through_the_tool(
    comfy_services: Services, comfy: ComfyFake
) -> None:
    init = photo("astronaut", 64)
    mask = Image.new("RGB", (64, 64), "black")
    mask.paste((255, 255, 255), (8, 8, 40, 40))
    async with Client(build_server(comfy_services.config, comfy_services)) as client:
        out = await call_ok(
            client,
            "controlled_generate",
            {
                "prompt": "a golden helmet",
                "model": "comfy-inpaint",
                "init_image": data_uri(init),
                "mask_image": data_uri(mask),
                "strength": 0.8,
                "seed": 5,
            },
        )
    (graph,) = comfy.graphs
    assert graph["6"]["inputs"]["text"] == "a golden helmet" and graph["3"]["inputs"]["seed"] == 5
    assert graph["3"]["inputs"]["denoise"] == 0.8
    sent_mask = Image.open(io.BytesIO(comfy.uploads[graph["11"]["inputs"]["image"]]))
    assert sent_mask.mode == "L" and sent_mask.getpixel((20, 20)) == 255 and sent_mask.getpixel((50, 50)) == 0
    assert len(out["images"]) == 1 and out["seed"] == 5


CONTROL_LORA = {
    "3": {
        "class_type": "KSampler",
        "inputs": {"seed": "{{seed}}", "model": ["20", 0], "positive": ["22", 0]},
    },
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["20", 1]}},
    "20": {
        "class_type": "LoraLoader",
        "inputs": {"lora_name": "{{lora}}", "strength_model": "{{lora_strength}}", "model": ["4", 0]},
    },
    "21": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "{{controlnet_file}}"}},
    "23": {"class_type": "LoadImage", "inputs": {"image": "{{control_image}}"}},
    "22": {
        "class_type": "ControlNetApply",
        "inputs": {
            "conditioning": ["6", 0],
            "control_net": ["21", 0],
            "image": ["23", 0],
            "strength": "{{control_scale}}",
        },
    },
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mmcp", "images": ["8", 0]}},
}


@pytest.fixture
def control_services(tmp_path: Path, allowed_root: Path, comfy: ComfyFake) -> Services:
    """comfy_models plus two entries sharing one ControlNet + LoRA template with their own values."""
    (tmp_path / "control.json").write_text(json.dumps(CONTROL_LORA))
    shared = f'task = "text_to_image"\nbackend = "comfyui"\nsource = "{tmp_path / "control.json"}"\n'
    extra = (
        comfy_models(tmp_path, comfy.url)
        + f"""
[models.comfy-canny-a]
{shared}capabilities = {{ control_types = ["canny"] }}
pipeline_kwargs = {{ lora = "ink-a.safetensors", lora_strength = 0.7, controlnet_file = "canny.pth" }}

[models.comfy-depth-b]
{shared}capabilities = {{ control_types = ["depth"] }}
pipeline_kwargs = {{ lora = "watercolor-b.safetensors", lora_strength = 1.0, controlnet_file = "depth.pth" }}
"""
    )
    config = hosted_config(
        tmp_path,
        tmp_path / "no-tiny-models",
        allowed_root,
        openai_url="http://127.0.0.1:9/v1",
        gemini_url="http://127.0.0.1:9/",
        extra_toml=extra,
    )
    return create_services(config, devices=cpu_only())


async def test_a_control_template_takes_the_uploaded_map_scale_and_the_models_lora(
    control_services: Services, comfy: ComfyFake
) -> None:
    hub = control_services.hub
    assert hub.capabilities("comfy-canny-a").control_types == ("canny",)
    assert hub.controlnet_for("comfy-canny-a", "canny", None) == "comfy-canny-a"
    async with Client(build_server(control_services.config, control_services)) as client:
        out = await call_ok(
            client,
            "controlled_generate",
            {
                "prompt": "a fox in ink",
                "model": "comfy-canny-a",
                "control_image": data_uri(photo("astronaut", 64)),
                "control_type": "canny",
                "conditioning_scale": 0.55,
                "seed": 9,
            },
        )
        stored_map = open_png(await read_png(client, out["controls"][0]["control_image"]["uri"]))
    (graph,) = comfy.graphs
    uploaded = Image.open(io.BytesIO(comfy.uploads[graph["23"]["inputs"]["image"]]))
    assert graph["23"]["inputs"]["image"].startswith("mmcp-control-")
    assert uploaded.convert("RGB").tobytes() == stored_map.convert("RGB").tobytes()
    assert uploaded.size == (64, 64) and uploaded.convert("L").getextrema() == (0, 255)  # canny edges
    assert graph["22"]["inputs"]["strength"] == 0.55 and graph["3"]["inputs"]["seed"] == 9
    assert graph["20"]["inputs"] == {
        "lora_name": "ink-a.safetensors",
        "strength_model": 0.7,
        "model": ["4", 0],
    }
    assert graph["21"]["inputs"]["control_net_name"] == "canny.pth"
    assert out["controls"][0]["controlnet"] == "comfy-canny-a" and out["controls"][0]["scale"] == 0.55


async def test_models_sharing_a_template_send_their_own_lora(
    control_services: Services, comfy: ComfyFake
) -> None:
    depth = Image.new("RGB", (64, 64), (40, 40, 40))
    depth.paste((200, 200, 200), (16, 16, 48, 48))
    async with Client(build_server(control_services.config, control_services)) as client:
        await call_ok(
            client,
            "controlled_generate",
            {
                "prompt": "a fox",
                "model": "comfy-depth-b",
                "control_image": data_uri(depth),
                "control_type": "depth",
                "preprocess": False,
            },
        )
    (graph,) = comfy.graphs
    assert graph["20"]["inputs"]["lora_name"] == "watercolor-b.safetensors"
    assert (
        graph["20"]["inputs"]["strength_model"] == 1.0
        and graph["21"]["inputs"]["control_net_name"] == "depth.pth"
    )
    assert graph["22"]["inputs"]["strength"] == 0.8  # conditioning_scale's default
    uploaded = Image.open(io.BytesIO(comfy.uploads[graph["23"]["inputs"]["image"]])).convert("RGB")
    assert uploaded.tobytes() == depth.tobytes()  # a prepared map goes as given


async def test_a_control_type_the_template_does_not_declare_is_refused(
    control_services: Services, comfy: ComfyFake
) -> None:
    async with Client(build_server(control_services.config, control_services)) as client:
        message = await call_error(
            client,
            "controlled_generate",
            {
                "prompt": "a fox",
                "model": "comfy-canny-a",
                "control_image": data_uri(photo()),
                "control_type": "depth",
            },
        )
        defaulted = await call_error(
            client,
            "controlled_generate",
            {"prompt": "a fox", "model": "comfy-depth-b", "control_image": data_uri(photo())},
        )
        named = await call_error(
            client,
            "controlled_generate",
            {
                "prompt": "a fox",
                "model": "comfy-canny-a",
                "control_image": data_uri(photo()),
                "controlnet": "x",
            },
        )
        bare = await call_error(client, "generate_image", {"prompt": "a fox", "model": "comfy-canny-a"})
        two = {"image": data_uri(photo()), "type": "canny"}
        several = await call_error(
            client,
            "controlled_generate",
            {"prompt": "a fox", "model": "comfy-canny-a", "controls": [two, two]},
        )
    assert (
        "model 'comfy-canny-a' does not take control_type='depth' (it takes control_type: canny)" in message
    )
    able = message.split("models that do: ")[1].split(".")[0].split(", ")
    assert "comfy-depth-b" in able and "comfy-canny-a" not in able
    assert (
        "model 'comfy-depth-b' does not take control_type='canny'" in defaulted
        and "comfy-canny-a" in defaulted
    )
    assert "carries its ControlNet in its own workflow; omit controlnet=" in named
    assert "model 'comfy-canny-a''s workflow needs control_image (use controlled_generate)" in bare
    assert "model 'comfy-canny-a' takes one control map per call" in several
    assert comfy.graphs == [] and not [r for r in comfy.requests if r[1] == "/upload/image"]


def test_a_template_value_left_unset_or_an_undeclared_control_is_refused_at_load(
    tmp_path: Path, allowed_root: Path, comfy: ComfyFake
) -> None:
    from multimodal_mcp.errors import BackendError

    (tmp_path / "control.json").write_text(json.dumps(CONTROL_LORA))
    source = f'task = "text_to_image"\nbackend = "comfyui"\nsource = "{tmp_path / "control.json"}"\n'
    extra = (
        comfy_models(tmp_path, comfy.url)
        + f"""
[models.no-lora]
{source}capabilities = {{ control_types = ["canny"] }}
pipeline_kwargs = {{ lora_strength = 0.7, controlnet_file = "canny.pth" }}

[models.no-types]
{source}pipeline_kwargs = {{ lora = "a.safetensors", lora_strength = 0.7, controlnet_file = "canny.pth" }}
"""
    )
    config = hosted_config(
        tmp_path,
        tmp_path / "no-tiny-models",
        allowed_root,
        openai_url="http://127.0.0.1:9/v1",
        gemini_url="http://127.0.0.1:9/",
        extra_toml=extra,
    )
    hub = create_services(config, devices=cpu_only()).hub
    with pytest.raises(BackendError, match=r"placeholders with no value: \['lora'\]"):
        hub.image_generator("no-lora")
    assert not hub.capabilities("no-lora").seed  # the listing goes on without the template's
    with pytest.raises(
        BackendError, match=r"model 'no-types': a ComfyUI template with \{\{control_image\}\}"
    ):
        hub.image_generator("no-types")


def test_a_control_scale_without_a_control_image_is_refused_at_load(
    tmp_path: Path, allowed_root: Path, comfy: ComfyFake
) -> None:
    from multimodal_mcp.errors import BackendError

    template = json.loads(json.dumps(TEXT_TO_IMAGE))
    template["3"]["inputs"]["denoise"] = "{{control_scale}}"  # a scale with no map to apply it to
    (tmp_path / "scale.json").write_text(json.dumps(template))
    extra = comfy_models(tmp_path, comfy.url) + (
        f'\n[models.scale-only]\ntask = "text_to_image"\nbackend = "comfyui"\n'
        f'source = "{tmp_path / "scale.json"}"\n'
    )
    config = hosted_config(
        tmp_path,
        tmp_path / "no-tiny-models",
        allowed_root,
        openai_url="http://127.0.0.1:9/v1",
        gemini_url="http://127.0.0.1:9/",
        extra_toml=extra,
    )
    hub = create_services(config, devices=cpu_only()).hub
    with pytest.raises(BackendError, match=r"\{\{control_scale\}\} needs \{\{control_image\}\}"):
        hub.image_generator("scale-only")
