"""Interactive views (MCP Apps) for hosts that render them: a gallery, a before/after comparison and a
mask painter, each one self-contained HTML document.

A view is an extra on top of a tool's result, never a replacement: the tool returns its full text and
structured content to every client, and a host that renders MCP Apps also shows the view, fed that
same result over the Apps bridge (``static/bridge.js``, written for this project). Views ship no
external scripts or fonts: their JavaScript and CSS are inlined, and images arrive as ``data:`` URIs
(from the result's previews or ``resources/read`` of ``image://`` through the host), so they work
under the Apps default content security policy.

This package knows nothing of MCP's Python SDK: ``multimodal_mcp.server.views`` registers the views
and the tools only they call (``actions``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

STATIC = files(__package__) / "static"


@dataclass(frozen=True)
class View:
    uri: str
    title: str
    description: str
    page: str
    """The HTML template in ``static/``; its ``<!-- inline:NAME -->`` markers are replaced by the
    file ``static/NAME`` (a script or a stylesheet)."""


GALLERY = View(
    "ui://multimodal-mcp/gallery.html",
    "Image gallery",
    "The images of a generation and your earlier ones: full size, prompt, seed, parameters and "
    "verification; make a variation, compare two, start from one, or paint an inpainting mask.",
    "gallery.html",
)
COMPARE = View(
    "ui://multimodal-mcp/compare.html",
    "Before/after comparison",
    "Two images with a swipe slider, side by side, the difference heat map as an overlay, the changed "
    "regions and the metrics.",
    "compare.html",
)
VIEWS = (GALLERY, COMPARE)

TOOL_VIEWS = {
    "generate_image": GALLERY,
    "controlled_generate": GALLERY,
    "compare_images": COMPARE,
}
"""The view each model-visible tool declares."""

_MARKER = re.compile(r"<!-- inline:([a-z_]+\.(?:js|css)) -->")


@cache
def page(view: View) -> str:
    """The view's HTML document with its scripts and stylesheets inlined."""

    def inline(match: re.Match[str]) -> str:
        name = match.group(1)
        text = (STATIC / name).read_text(encoding="utf-8")
        return f"<style>\n{text}</style>" if name.endswith(".css") else f"<script>\n{text}</script>"

    return _MARKER.sub(inline, (STATIC / view.page).read_text(encoding="utf-8"))


def stylesheet() -> str:
    """The views' shared stylesheet (the demo's report uses it too)."""
    return (STATIC / "common.css").read_text(encoding="utf-8")
