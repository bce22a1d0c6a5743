"""Shared fixtures: tiny models built once per session, a fresh store and server per test."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from multimodal_mcp.backends.tiny import ensure_tiny_models
from multimodal_mcp.config import Config, load_config
from multimodal_mcp.server.app import MultimodalServer, build_server, create_services
from multimodal_mcp.tools.common import Services

from helpers import cpu_only


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


def make_config(tmp_path: Path, tiny_dir: Path, allowed_root: Path, **server: Any) -> Config:
    return load_config(
        profile="tiny",
        cache_dir=tmp_path / "cache",
        home=tmp_path,
        default_allowed_roots=[allowed_root],
        overrides={"store_dir": tmp_path / "store", "tiny_dir": tiny_dir, **server},
    )


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
