"""Shared fixtures: tiny models built once per session, a fresh store and server per test."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
from mcp import Client

from multimodal_mcp.backends.tiny import ensure_tiny_models
from multimodal_mcp.config import Config
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.server.registration import MultimodalServer
from multimodal_mcp.tools.common import Services

from fake_providers import GeminiFake, OpenAIFake, hosted_config
from helpers import cpu_only, make_config

# Tests assert behaviour, not speed: one intra-op thread keeps torch from thrashing when the two
# cores are shared (with a subprocess server, or another job on the machine).
torch.set_num_threads(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every ``async def`` test on anyio (asyncio backend) without marking each one."""
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.anyio)


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
def hosted_services(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path, openai_fake: OpenAIFake, gemini_fake: GeminiFake
) -> Services:
    config = hosted_config(
        tmp_path, tiny_dir, allowed_root, openai_url=f"{openai_fake.url}/v1", gemini_url=f"{gemini_fake.url}/"
    )
    return create_services(config, devices=cpu_only())


@pytest.fixture
async def hosted_client(hosted_services: Services) -> AsyncIterator[Client]:
    async with Client(build_server(hosted_services.config, hosted_services)) as c:
        yield c
