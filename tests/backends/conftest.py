"""Fixtures for the backend contract: every built-in backend's models, and the test plugins'
(tests/plugins, found through their entry points), in one server configuration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_comfyui import ComfyFake
from multimodal_mcp import registry
from multimodal_mcp.server.app import create_services
from multimodal_mcp.tools.common import Services

from fake_providers import (
    ANTHROPIC_KEY,
    GEMINI_KEY,
    OPENAI_KEY,
    AnthropicFake,
    FakeProvider,
    GeminiFake,
    GoogleTokenFake,
    OpenAIFake,
    Recorded,
    Scripted,
)
from fake_providers import hosted_config as make_hosted_config
from helpers import cpu_only, qwen_vl_without_torchvision

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"
COMFY_TEMPLATE = {
    "3": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "steps": "{{steps}}", "cfg": "{{cfg}}"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": "{{width}}", "height": "{{height}}"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}"}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mmcp", "images": ["8", 0]}},
}
ECHO_KEY = "echo-test-0123456789"


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The test plugin distribution on sys.path, as if pip had installed it: the registry finds its
    backends through their entry points."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    registry.reload()
    yield PLUGINS
    registry.reload()


def _echo(request: Recorded) -> Scripted:
    body = request.json or {}
    text = f"{len(body.get('images', []))} image(s) seen; asked: {body.get('prompt', '')}"
    return Scripted(body={"text": text, "tokens": len(text.split())})


@pytest.fixture
def echo_fake() -> Iterator[FakeProvider]:
    fake = FakeProvider(_echo)
    yield fake
    fake.stop()


@pytest.fixture
def fakes(openai_fake: OpenAIFake, gemini_fake: GeminiFake) -> tuple[OpenAIFake, GeminiFake]:
    return openai_fake, gemini_fake


PLUGIN_MODELS = """
[hosted.echo]
base_url = "{echo_url}/"
timeout_seconds = 20

[models.painter]
task = "text_to_image"
backend = "painter"
source = "painter-v1"
description = "Seeded noise over a gradient (a test plugin)."
pipeline_kwargs = {{ seconds_per_step = 0.01 }}
defaults = {{ steps = 2, width = 64, height = 64 }}

[models.compatible-vlm]
task = "vlm"
backend = "openai"
source = "llava:13b"
base_url = "{compatible_url}/v1"
description = "A VLM on an OpenAI-compatible server of its own (the OpenAI fake, keyless)."

[hosted.comfyui]
base_url = "{comfy_url}"

[models.comfy-sdxl]
task = "text_to_image"
backend = "comfyui"
source = "{comfy_template}"
description = "A ComfyUI workflow template (the ComfyUI fake)."

[hosted.vertex_ai]
base_url = "{vertex_url}/"
project = "mmcp-contract"
location = "us-central1"
credentials_file = "{vertex_key}"

[models.vertex-flash]
task = "vlm"
backend = "vertex_ai"
source = "gemini-2.5-flash"
description = "Gemini on Vertex AI with a project and a service account (the Gemini and token fakes)."

[models.echo-vlm]
task = "vlm"
backend = "echo"
source = "echo-1"
description = "Says what it was sent (a test plugin)."
"""


@pytest.fixture
def token_fake() -> Iterator[GoogleTokenFake]:
    fake = GoogleTokenFake()
    yield fake
    fake.stop()


@pytest.fixture
def comfy_fake() -> Iterator[ComfyFake]:
    fake = ComfyFake()
    yield fake
    fake.stop()


@pytest.fixture
def contract_services(
    plugins: Path,
    tmp_path: Path,
    tiny_dir: Path,
    allowed_root: Path,
    openai_fake: OpenAIFake,
    gemini_fake: GeminiFake,
    echo_fake: FakeProvider,
    anthropic_fake: AnthropicFake,
    comfy_fake: ComfyFake,
    token_fake: GoogleTokenFake,
    monkeypatch: pytest.MonkeyPatch,
) -> Services:
    """The tiny profile, the hosted models on loopback fakes, and the plugins' painter and echo-vlm.
    Tests run its models inside ``running`` (test_contract.py), which also closes the hosted clients."""
    qwen_vl_without_torchvision(monkeypatch)
    template = tmp_path / "comfy.json"
    template.write_text(json.dumps(COMFY_TEMPLATE))
    config = make_hosted_config(
        tmp_path,
        tiny_dir,
        allowed_root,
        openai_url=f"{openai_fake.url}/v1",
        gemini_url=f"{gemini_fake.url}/",
        anthropic_url=anthropic_fake.url,
        environ={
            "OPENAI_API_KEY": OPENAI_KEY,
            "GEMINI_API_KEY": GEMINI_KEY,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ECHO_API_KEY": ECHO_KEY,
        },
        extra_toml=PLUGIN_MODELS.format(
            echo_url=echo_fake.url,
            compatible_url=openai_fake.url,
            comfy_url=comfy_fake.url,
            comfy_template=template,
            vertex_url=gemini_fake.url,
            vertex_key=token_fake.service_account_file(tmp_path / "vertex-key.json"),
        ),
    )
    return create_services(config, devices=cpu_only())
