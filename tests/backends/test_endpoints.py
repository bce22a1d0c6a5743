"""Per-model endpoints (base_url, api_key_env, timeout, headers) and each SDK's environment
conventions, through the real SDKs against loopback fakes of their APIs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import ElicitResult

from multimodal_mcp.backends.hosted import NO_KEY
from multimodal_mcp.config import Config, ConfigError, SpendingSettings, load_config
from multimodal_mcp.errors import BackendError
from multimodal_mcp.server.app import build_server, create_services

from fake_providers import GEMINI_KEY, OPENAI_KEY, GeminiFake, OpenAIFake, hosted_config
from helpers import call_error, call_ok, cpu_only, data_uri, photo

pytest.importorskip("openai")

LOCAL_KEY = "litellm-test-0123456789"


@pytest.fixture
def second_fake() -> Iterator[OpenAIFake]:
    fake = OpenAIFake()
    yield fake
    fake.stop()


@pytest.fixture
def third_fake() -> Iterator[OpenAIFake]:
    fake = OpenAIFake()
    yield fake
    fake.stop()


def _endpoints_config(
    tmp_path: Path,
    allowed_root: Path,
    provider: OpenAIFake,
    ollama: OpenAIFake,
    proxy: OpenAIFake,
    tiny_dir: Path | None = None,
    **env: str,
) -> Config:
    """The provider's own models on ``provider``, plus an Ollama-like keyless endpoint serving a VLM
    and a text model, and a LiteLLM-like proxy with its own key, timeout and header."""
    models = f"""
[models.llava-local]
task = "vlm"
backend = "openai"
source = "llava:13b"
base_url = "{ollama.url}/v1"

[models.llama-local]
task = "text"
backend = "openai"
source = "llama3.2"
base_url = "{ollama.url}/v1"

[models.qwen-proxy]
task = "vlm"
backend = "openai"
source = "qwen2.5-vl-7b"
base_url = "{proxy.url}/v1"
api_key_env = "LITELLM_KEY"
timeout = 30
headers = {{ x-team = "vision" }}

[defaults]
prompt_rewrite = "llama-local"
"""
    return hosted_config(
        tmp_path,
        tiny_dir or tmp_path / "no-tiny-models",
        allowed_root,
        openai_url=f"{provider.url}/v1",
        gemini_url="http://127.0.0.1:9/",
        environ={"OPENAI_API_KEY": OPENAI_KEY, **env},
        extra_toml=models,
    )


@pytest.mark.model  # compare_images' clip_similarity comes from the local tiny CLIP
async def test_two_compatible_endpoints_and_the_provider_serve_one_chain_in_one_server(
    tmp_path: Path,
    tiny_dir: Path,
    allowed_root: Path,
    openai_fake: OpenAIFake,
    second_fake: OpenAIFake,
    third_fake: OpenAIFake,
) -> None:
    ollama, proxy = second_fake, third_fake
    config = _endpoints_config(
        tmp_path, allowed_root, openai_fake, ollama, proxy, tiny_dir=tiny_dir, LITELLM_KEY=LOCAL_KEY
    )
    server = config.server.model_copy(update={"spending": SpendingSettings(confirm="ask")})
    config = config.model_copy(update={"server": server})
    services = create_services(config, devices=cpu_only())
    questions: list[str] = []

    async def user(context: Any, params: Any) -> ElicitResult:
        questions.append(params.message)
        return ElicitResult(action="accept", content={})

    ollama.chat_answer = "A lighthouse on a cliff."
    proxy.chat_answer = "The second picture is darker."
    rewritten = "A tall lighthouse at dusk, oil painting"
    async with Client(build_server(config, services), elicitation_callback=user) as client:
        # 1. An image from the provider's own endpoint, its prompt rewritten by the local text model.
        ollama.chat_answer = rewritten
        made = await call_ok(
            client,
            "generate_image",
            {"prompt": "a lighthouse", "model": "gpt-image-2", "enhance_prompt": True},
        )
        ollama.chat_answer = "A lighthouse on a cliff."
        uri = made["images"][0]["uri"]
        # 2. Described by the keyless local endpoint, 3. compared by the proxy with its key.
        described = await call_ok(client, "describe_image", {"image": uri, "model": "llava-local"})
        compared = await call_ok(
            client,
            "compare_images",
            {
                "image_a": uri,
                "image_b": data_uri(photo("coffee", 64)),
                "describe": True,
                "model": "qwen-proxy",
            },
        )
        assert services.hub.connections.requests == {
            "openai": 1,
            f"openai@{ollama.url}/v1": 2,
            f"openai@{proxy.url}/v1": 1,
        }

    (generation,) = openai_fake.requests
    assert generation.path == "/v1/images/generations" and generation.json["prompt"] == rewritten
    assert generation.headers["authorization"] == f"Bearer {OPENAI_KEY}"

    rewrite, describe = ollama.requests
    assert rewrite.path == describe.path == "/v1/chat/completions"
    assert rewrite.json["model"] == "llama3.2" and rewrite.json["messages"][-1]["content"].endswith(
        "a lighthouse"
    )
    assert describe.json["model"] == "llava:13b"
    assert [p["type"] for p in describe.json["messages"][0]["content"]] == ["text", "image_url"]
    for request in ollama.requests:  # the provider's key never goes to another server
        assert request.headers["authorization"] == f"Bearer {NO_KEY}"

    (comparison,) = proxy.requests
    assert comparison.json["model"] == "qwen2.5-vl-7b"
    assert [p["type"] for p in comparison.json["messages"][0]["content"]] == [
        "text",
        "image_url",
        "image_url",
    ]
    assert comparison.headers["authorization"] == f"Bearer {LOCAL_KEY}"
    assert comparison.headers["x-team"] == "vision"

    assert described["text"] == "A lighthouse on a cliff."
    assert compared["narrative"] == "The second picture is darker."
    # Only the provider's model is paid, so only it was confirmed.
    assert len(questions) == 1 and "gpt-image-2" in questions[0]


def test_a_model_with_its_own_base_url_is_unpaid_unless_it_says_so_and_sends_no_key(
    tmp_path: Path,
    allowed_root: Path,
    openai_fake: OpenAIFake,
    second_fake: OpenAIFake,
    third_fake: OpenAIFake,
) -> None:
    config = _endpoints_config(tmp_path, allowed_root, openai_fake, second_fake, third_fake)
    assert [config.models[n].is_paid for n in ("gpt-4o", "llava-local", "qwen-proxy")] == [True, False, False]
    local = config.hosted.for_model("llava-local", config.models["llava-local"])
    assert (local.base_url, local.api_key, local.api_key_env) == (f"{second_fake.url}/v1", None, "")
    proxy = config.hosted.for_model("qwen-proxy", config.models["qwen-proxy"])
    assert (proxy.timeout_seconds, proxy.headers, proxy.key_from) == (30, {"x-team": "vision"}, None)
    services = create_services(config, devices=cpu_only())
    assert (
        services.hub.where("llava-local")["status"]
        == f"hosted (openai at {second_fake.url}/v1, no key needed)"
    )
    assert services.hub.where("qwen-proxy")["status"].endswith("no key: set LITELLM_KEY)")


async def test_errors_about_an_endpoint_name_its_server_and_its_config_keys_not_the_provider(
    tmp_path: Path,
    allowed_root: Path,
    openai_fake: OpenAIFake,
    second_fake: OpenAIFake,
    third_fake: OpenAIFake,
) -> None:
    config = _endpoints_config(tmp_path, allowed_root, openai_fake, second_fake, third_fake)
    services = create_services(config, devices=cpu_only())
    third_fake.stop()  # the proxy is down
    async with Client(build_server(config, services)) as client:
        image = data_uri(photo("coffee", 32))
        missing = await call_error(client, "describe_image", {"image": image, "model": "qwen-proxy"})
        assert f"needs an API key for the server at {third_fake.url}/v1: set LITELLM_KEY" in missing
        assert "models.qwen-proxy.api_key_env" in missing and "OpenAI" not in missing
        second_fake.stop()
        down = await call_error(client, "describe_image", {"image": image, "model": "llava-local"})
    assert f"could not reach the server at {second_fake.url}/v1 for model 'llava-local'" in down
    assert "models.llava-local.base_url" in down and "OpenAI" not in down


def _load(tmp_path: Path, text: str, environ: dict[str, str]) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(
        profile="tiny", config_file=path, cache_dir=tmp_path / "cache", home=tmp_path, environ=environ
    )


async def test_openai_base_url_from_the_environment_is_where_requests_go(
    tmp_path: Path, openai_fake: OpenAIFake
) -> None:
    text = '[models.vlm]\ntask = "vlm"\nbackend = "openai"\nsource = "gpt-4o"\n'
    environ = {"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": f"{openai_fake.url}/v1"}
    config = _load(tmp_path, text, environ)
    assert config.hosted.for_backend("openai").base_url == f"{openai_fake.url}/v1"
    services = create_services(config, devices=cpu_only())
    try:
        answer = await services.hub.vision_chat("vlm").answer([photo("coffee", 16)], "what?", max_tokens=20)
    finally:
        await services.hub.aclose()
    assert answer.text == openai_fake.chat_answer
    assert [r.path for r in openai_fake.requests] == ["/v1/chat/completions"]
    # The config file's own base_url wins over the variable.
    pinned = _load(tmp_path, '[hosted.openai]\nbase_url = "http://127.0.0.1:9/v1"\n' + text, environ)
    assert pinned.hosted.for_backend("openai").base_url == "http://127.0.0.1:9/v1"


async def test_azure_openai_takes_its_endpoint_key_and_api_version_from_the_sdk_variables(
    tmp_path: Path, openai_fake: OpenAIFake
) -> None:
    text = '[models.az]\ntask = "vlm"\nbackend = "azure_openai"\nsource = "my-gpt4o-deployment"\n'
    environ = {
        "AZURE_OPENAI_ENDPOINT": openai_fake.url,
        "AZURE_OPENAI_API_KEY": "az-test-0123456789",
        "OPENAI_API_VERSION": "2024-06-01",
    }
    config = _load(tmp_path, text, environ)
    assert config.models["az"].is_paid
    services = create_services(config, devices=cpu_only())
    try:
        answer = await services.hub.vision_chat("az").answer([photo("coffee", 16)], "what?", max_tokens=20)
    finally:
        await services.hub.aclose()
    (request,) = openai_fake.requests
    assert request.path == "/openai/deployments/my-gpt4o-deployment/chat/completions?api-version=2024-06-01"
    assert request.headers["api-key"] == "az-test-0123456789"
    assert answer.text == openai_fake.chat_answer

    unset = create_services(_load(tmp_path, text, {"AZURE_OPENAI_API_KEY": "k"}), devices=cpu_only())
    with pytest.raises(BackendError, match="set AZURE_OPENAI_ENDPOINT"):
        await unset.hub.vision_chat("az").answer([photo("coffee", 16)], "what?", max_tokens=20)


def test_endpoint_settings_are_refused_on_local_models(tmp_path: Path) -> None:
    text = (
        '[models.x]\ntask = "clip"\nbackend = "transformers"\nsource = "s"\nbase_url = "http://127.0.0.1:1"\n'
    )
    with pytest.raises(ConfigError, match="apply to hosted backends only"):
        _load(tmp_path, text, {})
    bad = '[models.x]\ntask = "vlm"\nbackend = "openai"\nsource = "s"\nbase_url = "localhost:11434"\n'
    with pytest.raises(ConfigError, match="base_url"):
        _load(tmp_path, bad, {})


def test_the_readme_recipes_load_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Recipes:", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```toml\n")[1:]]
    assert len(blocks) == 8
    configs = [_load(tmp_path, block, {}) for block in blocks]
    assert configs[0].defaults["vlm"] == "qwen-vl-local"
    models = {n: (s, c) for c in configs for n, s in c.models.items() if s.hosted}
    own = [n for n, (s, _) in models.items() if s.base_url is not None]
    assert own == ["llava-local", "qwen-vl-local", "qwen-vllm", "lmstudio-vlm", "llamacpp-vlm", "team-gpt4o"]
    assert [models[n][0].is_paid for n in own] == [False] * 5 + [True]
    assert models["azure-gpt4o"][0].is_paid and models["claude-opus"][0].is_paid
    assert not models["comfy-sdxl"][0].is_paid
    vllm, config = models["qwen-vllm"]
    assert config.hosted.for_model("qwen-vllm", vllm).timeout_seconds == 300
    vertex = models["gemini-vertex"][1].hosted.for_backend("vertex_ai")
    assert (vertex.project, vertex.location) == ("my-project-123", "us-central1")
    assert vertex.base_url == "https://us-central1-aiplatform.googleapis.com/"
    assert models["gemini-vertex"][0].is_paid and models["gemini-vertex-image"][0].task == "text_to_image"


async def test_a_gemini_model_may_name_its_own_endpoint_with_headers_and_no_provider_key(
    tmp_path: Path, gemini_fake: GeminiFake
) -> None:
    text = f"""
[models.gemini-proxy]
task = "vlm"
backend = "gemini"
source = "gemini-2.5-flash"
base_url = "{gemini_fake.url}/"
headers = {{ x-route = "eu" }}
"""
    config = _load(tmp_path, text, {"GEMINI_API_KEY": GEMINI_KEY})
    assert not config.models["gemini-proxy"].is_paid
    services = create_services(config, devices=cpu_only())
    try:
        answer = await services.hub.vision_chat("gemini-proxy").answer(
            [photo("coffee", 16)], "what?", max_tokens=9
        )
    finally:
        await services.hub.aclose()
    (request,) = gemini_fake.requests
    assert request.path.endswith("models/gemini-2.5-flash:generateContent")
    assert request.headers["x-route"] == "eu"
    assert GEMINI_KEY not in str(request.headers) and request.headers["x-goog-api-key"] == NO_KEY
    assert answer.text == gemini_fake.answer


async def test_vertex_ai_express_mode_takes_the_google_api_key_and_speaks_vertex_paths(
    tmp_path: Path, gemini_fake: GeminiFake
) -> None:
    text = f"""
[hosted.vertex_ai]
base_url = "{gemini_fake.url}/"

[models.gemini-vertex]
task = "vlm"
backend = "vertex_ai"
source = "gemini-2.5-flash"
"""
    config = _load(tmp_path, text, {"GOOGLE_API_KEY": "vx-test-0123456789"})
    assert config.models["gemini-vertex"].is_paid
    services = create_services(config, devices=cpu_only())
    try:
        answer = await services.hub.vision_chat("gemini-vertex").answer(
            [photo("coffee", 16)], "what?", max_tokens=9
        )
    finally:
        await services.hub.aclose()
    (request,) = gemini_fake.requests
    assert request.path == "/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == "vx-test-0123456789"
    assert answer.text == gemini_fake.answer
    missing = create_services(_load(tmp_path, text, {}), devices=cpu_only())
    with pytest.raises(
        BackendError, match=r"needs Vertex AI credentials: .* express-mode API key in GOOGLE_API_KEY"
    ):
        await missing.hub.vision_chat("gemini-vertex").answer([photo("coffee", 16)], "what?", max_tokens=9)
