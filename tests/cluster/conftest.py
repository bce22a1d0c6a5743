"""The session's Ray cluster for the ``ray`` tests: one small local cluster on loopback (2 CPUs, a
150 MB object store, no dashboard, Serve's HTTP proxy off), started by the first test that needs it,
with the engine's two deployments, ``tiny-sd15`` (with its components) and ``clip`` (tiny-clip)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from multimodal_mcp.config import Config

from helpers import make_config


@pytest.fixture(scope="session")
def ray_config(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Config:
    root = tmp_path_factory.mktemp("ray-engine")
    (root / "allowed").mkdir()
    return make_config(root, tiny_dir, root / "allowed")


@pytest.fixture(scope="session")
def engine(ray_config: Config) -> Iterator[Any]:
    pytest.importorskip("ray.serve")
    from multimodal_mcp.cluster.engine import RayEngine
    from multimodal_mcp.cluster.settings import FamilySettings, RaySettings

    settings = RaySettings(
        only=frozenset({"tiny-sd15", "tiny-clip"}),
        families={"tiny-sd15": FamilySettings(max_ongoing_requests=2, max_queued_requests=1)},
        call_timeout=120,
        silence_timeout=30,
        heartbeat=0.5,
        deploy_timeout=150,
        local_cpus=2,
        local_object_store_bytes=150 * 1024**2,
    )
    made = RayEngine(ray_config, settings)
    made.start()
    yield made
    made.stop()
