"""A host for the views in a real browser: the host side of the MCP Apps bridge (host.html) over an
MCP client connected to the server, driven by Playwright.

It does what a host that renders Apps does: finds the view a tool declares (``_meta.ui.resourceUri``),
reads it from the server, calls the tool, renders the view in a sandboxed iframe under the Apps
default content security policy, sends it the tool's input and result, and passes the view's
``tools/call`` and ``resources/read`` requests to the server, recording each call and its result.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.types import CallToolResult, TextResourceContents
from PIL import Image
from playwright.async_api import ConsoleMessage, FrameLocator, Page

APP_MIME_TYPE = "text/html;profile=mcp-app"
DEFAULT_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' data:; connect-src 'none'"
)
"""The content security policy the MCP Apps spec has hosts apply to a view that declares no domains."""
HOST_PAGE = (Path(__file__).parent / "host.html").read_text(encoding="utf-8")


def wire(model: Any) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


@dataclass
class ViewCall:
    """A tools/call a view made through the host."""

    name: str
    arguments: dict[str, Any]
    result: CallToolResult


@dataclass
class Host:
    page: Page
    client: Client
    screenshots: Path
    calls: list[ViewCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Console errors in the page and the view (a blocked resource, a script error)."""

    async def start(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(str(error)))
        await self.page.expose_function("hostRequest", self._request)
        await self.page.set_content(HOST_PAGE)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(message.text)

    async def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "tools/call":
            arguments = params.get("arguments") or {}
            result = await self.client.call_tool(params["name"], arguments)
            self.calls.append(ViewCall(params["name"], arguments, result))
            return wire(result)
        if method == "resources/read":
            return wire(await self.client.read_resource(params["uri"]))
        raise ValueError(f"this host does not pass {method} to the server")

    async def show(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        """Call ``tool`` and render the view it declares with its result; returns the result once the
        view says it is ready (``body[data-ready]``)."""
        listed = {t.name: t for t in (await self.client.list_tools()).tools}
        uri = (listed[tool].meta or {})["ui"]["resourceUri"]
        (contents,) = (await self.client.read_resource(uri)).contents
        assert isinstance(contents, TextResourceContents) and contents.mime_type == APP_MIME_TYPE
        html = contents.text.replace(
            "<head>", f'<head><meta http-equiv="Content-Security-Policy" content="{DEFAULT_CSP}">', 1
        )
        result = await self.client.call_tool(tool, arguments)
        assert not result.is_error
        await self.page.evaluate(
            "([html, input, result]) => showView(html, input, result)", [html, arguments, wire(result)]
        )
        await self.view.locator("body[data-ready=true]").wait_for(timeout=15_000)
        return result

    @property
    def view(self) -> FrameLocator:
        return self.page.frame_locator("#view")

    async def pixels(self, selector: str, name: str | None = None) -> Image.Image:
        """What a person sees of the element: its screenshot, saved as ``name``.png when named."""
        data = await self.view.locator(selector).screenshot()
        if name is not None:
            (self.screenshots / f"{name}.png").write_bytes(data)
        return Image.open(io.BytesIO(data)).convert("RGB")

    async def screenshot(self, name: str) -> None:
        await self.page.screenshot(path=str(self.screenshots / f"{name}.png"), full_page=True)

    async def next_call(self, name: str, after: int) -> ViewCall:
        """The first call of ``name`` the view made after the first ``after`` calls, waiting for it."""
        for _ in range(200):
            for call in self.calls[after:]:
                if call.name == name:
                    return call
            await self.page.wait_for_timeout(50)
        raise AssertionError(f"the view made no {name} call; it made {[c.name for c in self.calls]}")
