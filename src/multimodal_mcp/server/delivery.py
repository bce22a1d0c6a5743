"""How much a tool result weighs for the client: bytes and a conservative token estimate.

The renderer (server/rendering.py) sizes previews from these and checks the finished result against the
client's limits (``[server] client_limits``), leaving images out rather than going over.

Token estimate, deliberately pessimistic because clients count differently:

- text and JSON (the summary, resource links, the structured content, which some clients such as
  Claude Code also put into the model's context as text): one token per 3 characters (English prose
  averages about 4; ids, numbers and JSON punctuation tokenize worse);
- an image: the larger of its vision cost (width * height / 750, Anthropic's published estimate) and
  its base64 length at 3 characters per token, because some clients (some Claude Code versions)
  count an image block's base64 as text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from multimodal_mcp.imaging.store import URI_SCHEME

CHARS_PER_TOKEN = 3
PIXELS_PER_TOKEN = 750
ENVELOPE_BYTES = 1024
"""Room kept for the JSON-RPC envelope around the result and for notes added after sizing."""


def text_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def image_tokens(width: int, height: int, base64_chars: int) -> int:
    return max(math.ceil(width * height / PIXELS_PER_TOKEN), text_tokens(base64_chars))


def add_paths(structured: Any, path_of: Callable[[str], str] | None) -> dict[str, str]:
    """Every image reference in a dumped result (a dict with an ``image://`` uri) gets its local path
    when ``path_of`` is given; otherwise the empty ``path`` field is dropped. Returns {id: path}."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            uri = node.get("uri")
            if isinstance(uri, str) and uri.startswith(URI_SCHEME) and "path" in node:
                if path_of is not None:
                    node["path"] = found.setdefault(node["id"], path_of(node["id"]))
                elif node["path"] is None:
                    del node["path"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(structured)
    return found
