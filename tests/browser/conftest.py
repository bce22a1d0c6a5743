"""Fixtures for the views in a real browser: headless Chromium (the system's, e.g. Debian's
``chromium`` package) driven by Playwright for Python, over a server on the fake hub (no torch).

Without Playwright or Chromium the tests skip, unless MMCP_REQUIRE_BROWSER=1 (set by CI) turns the
skip into a failure. Chromium is ``$MMCP_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH.
Screenshots go to ``$MMCP_SCREENSHOTS``, else a temporary directory; the run's summary names it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.extension import advertise

from multimodal_mcp.server.app import build_server
from multimodal_mcp.tools.common import Services

from browser_fakes import steerable_services

APPS = advertise("io.modelcontextprotocol/ui", {"mimeTypes": ["text/html;profile=mcp-app"]})
_screenshot_dirs: list[Path] = []


def _unavailable(reason: str) -> None:
    message = f"{reason}; install Chromium (apt-get install chromium) and `pip install -e '.[browser]'`"
    if os.environ.get("MMCP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MMCP_REQUIRE_BROWSER=1 but {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = os.environ.get("MMCP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _unavailable("no Chromium found (MMCP_CHROMIUM, chromium, chromium-browser)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright for Python is not installed")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("MMCP_SCREENSHOTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("view-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    _screenshot_dirs.append(folder)
    return folder


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for folder in _screenshot_dirs:
        terminalreporter.write_line(f"view screenshots: {folder}")


@pytest.fixture
def view_services(tmp_path: Path, allowed_root: Path) -> Services:
    return steerable_services(tmp_path, allowed_root)


@pytest.fixture
async def apps_client(view_services: Services) -> AsyncIterator[Client]:
    """A client that negotiated MCP Apps, as a host that renders views is."""
    async with Client(build_server(view_services.config, view_services), extensions=[APPS]) as client:
        yield client


@pytest.fixture
async def host(chromium: str, apps_client: Client, screenshots: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    from view_host import Host

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium)
        try:
            page = await browser.new_page(viewport={"width": 920, "height": 800})
            view_host = Host(page, apps_client, screenshots)
            await view_host.start()
            yield view_host
            assert not view_host.problems, view_host.problems
        finally:
            await browser.close()
