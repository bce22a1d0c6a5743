"""A quick start (issue 20, item 3): nothing heavy before the first request that needs it.

``bench/startup.py`` measures the start against a bare MCP SDK server; these tests hold the reason it
is quick: the server module and its lifespan import no torch (nor diffusers, transformers,
accelerate), and devices are discovered when first needed, off the event loop.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from multimodal_mcp.config import Config
from multimodal_mcp.pool import Device, ModelPool
from multimodal_mcp.pool.devices import discover_devices

from helpers import cpu_only, make_config

SERVE_AND_LIST = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import anyio
    from mcp import Client

    import multimodal_mcp.pool.devices as devices
    from multimodal_mcp.config import load_config
    from multimodal_mcp.server.app import build_server

    HEAVY = ("torch", "diffusers", "transformers", "accelerate")
    after_import = [name for name in HEAVY if name in sys.modules]
    devices.gpu_may_be_present = lambda: False  # this machine as one without a GPU driver
    tmp = Path(sys.argv[1])
    config = load_config(
        profile="tiny", cache_dir=tmp / "cache", home=tmp, default_allowed_roots=[],
        overrides={"store_dir": tmp / "store", "tiny_dir": tmp / "tiny"},
    )

    async def main():
        async with Client(build_server(config)) as client:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            listed = await client.call_tool("list_models", {})
            status = json.loads((await client.read_resource("pool://status")).contents[0].text)
        print(json.dumps({
            "after_import": after_import,
            "after_serving": [name for name in HEAVY if name in sys.modules],
            "tools": tools,
            "devices": listed.structured_content["devices"],
            "status_devices": [d["name"] for d in status["devices"]],
            "torch_imported": status["torch_imported"],
        }))

    anyio.run(main)
    """
)


def test_the_server_module_and_its_lifespan_import_no_torch_before_a_model_is_needed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_LIST, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["after_import"] == []
    assert report["after_serving"] == []  # initialize, tools/list, list_models and pool://status
    assert "clip_classify" in report["tools"]
    assert report["devices"] == ["cpu"] and report["status_devices"] == ["cpu"]
    assert report["torch_imported"] is False


def test_on_a_machine_without_a_gpu_driver_only_the_cpu_is_found_for_every_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import multimodal_mcp.pool.devices as devices

    monkeypatch.setattr(devices, "gpu_may_be_present", lambda: False)
    for setting in ("auto", "cuda", "mps", "cpu"):
        found = discover_devices(setting, gpu_headroom_bytes=0, cpu_budget_bytes=3 * 1024**3)
        assert [(d.name, d.budget_bytes) for d in found] == [("cpu", 3 * 1024**3)]


async def test_a_pool_discovers_its_devices_once_in_the_background_when_it_starts_running(
    tmp_path: Path,
) -> None:
    config: Config = make_config(tmp_path, tmp_path / "tiny", tmp_path)
    calls: list[int] = []

    def discover() -> list[Device]:
        calls.append(1)
        return cpu_only(2)

    pool = ModelPool(config, discover)
    assert calls == [] and not pool.discovered  # creating the pool discovers nothing
    async with pool.running():
        with anyio.fail_after(10):
            found = await pool.discover()
        assert [d.name for d in found] == ["cpu"] and pool.cpu.budget_bytes == 2 * 1024**3
        assert pool.status()["devices"][0]["budget_bytes"] == 2 * 1024**3
    assert calls == [1]


async def test_a_failed_discovery_is_retried_by_the_next_call_that_needs_the_devices(tmp_path: Path) -> None:
    config = make_config(tmp_path, tmp_path / "tiny", tmp_path)
    attempts: list[int] = []

    def discover() -> list[Device]:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("driver not ready")
        return cpu_only()

    pool = ModelPool(config, discover)
    with pytest.raises(RuntimeError):
        await pool.discover()
    assert not pool.discovered
    assert [d.name for d in await pool.discover()] == ["cpu"]
    assert attempts == [1, 1]
