"""Shared fixtures: tiny models built once per session, a fresh store and server per test.

Markers (see pyproject.toml), applied here so that no test has to remember them:

- ``model``: the test needs the tiny models, so torch, diffusers and transformers. Every test that
  uses ``tiny_dir``, directly or through a fixture built on it (``config``, ``services``, ``server``,
  ``client``, ...), gets it; a test that needs them another way is marked by hand (a hosted test
  that also runs a local model, a test that imports torch). torch is imported when the first such
  test is set up, never when the suite is collected.
- ``node``: the third-party Node.js client tests (tests/clients).
- ``browser``: the views in headless Chromium (tests/browser).
- ``slow``: long-running tests (real checkpoints, big sizes).
- ``ray``: the Ray Serve engine on a local cluster (tests/cluster/test_ray_*.py), marked by hand;
  ``make test-ray`` and their own CI step run them.

``make test-fast`` runs the rest (``-m "not model and not node and not browser and not slow and not
ray"``) with ``--torch-free`` (tests/torch_free.py), which fails a test of that subset that imports
torch. Tool logic is tested there against tests/fake_hub.py.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mcp import Client

from multimodal_mcp.config import Config
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.server.registration import MultimodalServer
from multimodal_mcp.tools.common import Services

from fake_providers import AnthropicFake, GeminiFake, OpenAIFake, hosted_config
from helpers import cpu_only, make_config

pytest_plugins = ["torch_free", "fake_hub"]

MODEL_FIXTURE = "tiny_dir"
"""The fixture every test that runs a tiny model depends on, directly or through other fixtures."""


def _one_torch_thread() -> None:
    """Tests assert behaviour, not speed: one intra-op thread keeps torch from thrashing when the two
    cores are shared (with a subprocess server, or another job on the machine)."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from multimodal_mcp.backends.tiny import ensure_tiny_models

    _one_torch_thread()
    return ensure_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def allowed_root(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    return root


@pytest.fixture
def config(tmp_path: Path, tiny_dir: Path, allowed_root: Path) -> Config:
    return make_config(tmp_path, tiny_dir, allowed_root)


@pytest.fixture
def services(config: Config) -> Services:
    return create_services(config, devices=cpu_only())


@pytest.fixture
def server(config: Config, services: Services) -> MultimodalServer:
    return build_server(config, services)


@pytest.fixture
async def client(server: MultimodalServer) -> AsyncIterator[Client]:
    async with Client(server) as c:
        yield c


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every ``async def`` test on anyio (asyncio backend) without marking each one, and apply
    the ``model``, ``node`` and ``browser`` markers (tryfirst: before ``-m`` deselects by them)."""
    clients = Path(__file__).parent / "clients"
    browser = Path(__file__).parent / "browser"
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.anyio)
        if clients in item.path.parents:
            item.add_marker(pytest.mark.node)
        if browser in item.path.parents:
            item.add_marker(pytest.mark.browser)
        if MODEL_FIXTURE in getattr(item, "fixturenames", ()) or item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.model)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("model") is not None:
        _one_torch_thread()
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")


# --- hosted providers on loopback (tests/fake_providers.py) ---------------------------------------


@pytest.fixture
def openai_fake() -> Iterator[OpenAIFake]:
    fake = OpenAIFake()
    yield fake
    fake.stop()


@pytest.fixture
def gemini_fake() -> Iterator[GeminiFake]:
    fake = GeminiFake()
    yield fake
    fake.stop()


@pytest.fixture
def anthropic_fake() -> Iterator[AnthropicFake]:
    fake = AnthropicFake()
    yield fake
    fake.stop()


@pytest.fixture
def hosted_services(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    allowed_root: Path,
    openai_fake: OpenAIFake,
    gemini_fake: GeminiFake,
    anthropic_fake: AnthropicFake,
) -> Services:
    """The hosted models on the loopback fakes, beside the tiny profile's local ones. Only a test
    marked ``model`` gets the session's tiny models: the others run no local model (one that did
    would first build the tiny models into an empty folder, which ``--torch-free`` reports)."""
    local = request.node.get_closest_marker("model") is not None
    tiny = request.getfixturevalue(MODEL_FIXTURE) if local else tmp_path / "no-tiny-models"
    config = hosted_config(
        tmp_path,
        tiny,
        allowed_root,
        openai_url=f"{openai_fake.url}/v1",
        gemini_url=f"{gemini_fake.url}/",
        anthropic_url=anthropic_fake.url,
    )
    return create_services(config, devices=cpu_only())


@pytest.fixture
async def hosted_client(hosted_services: Services) -> AsyncIterator[Client]:
    async with Client(build_server(hosted_services.config, hosted_services)) as c:
        yield c
