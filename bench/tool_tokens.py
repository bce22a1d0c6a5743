"""What tools/list costs a model: cl100k tokens of the tool list, per tool and in all.

"Model-read" is what a host puts in front of the model for each tool (name, description, input
schema); "whole" is the tools/list result as sent (titles, annotations and output schemas too). Both
are counted on compact JSON, the form MCP messages travel in, with the cl100k_base encoding
(bpe-openai ships its vocabulary, so nothing is downloaded; it is in the `converters` extra).

    python bench/tool_tokens.py [--profile default] [--profile tiny]

Targets (issue 14): model-read at most 3,000 tokens, whole at most 8,000.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import anyio

from multimodal_mcp.config import load_config
from multimodal_mcp.server.app import build_server
from multimodal_mcp.server.registration import model_visible

MODEL_READ_TARGET = 3000
WHOLE_TARGET = 8000


def listed_tools(profile: str) -> list[dict[str, Any]]:
    """tools/list of a server on ``profile`` as JSON-ready dicts, the tools a model may see (no model
    is loaded)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = load_config(
            profile=profile,
            cache_dir=root / "cache",
            home=root,
            overrides={"store_dir": root / "store", "tiny_dir": root / "tiny"},
        )
        tools = anyio.run(build_server(config).list_tools)
    # What a client gets: the tools only an MCP Apps view calls are neither listed to other clients
    # nor shown to a model by a host that renders views.
    return [
        tool.model_dump(mode="json", by_alias=True, exclude_none=True)
        for tool in tools
        if model_visible(tool)
    ]


def tokens(value: Any) -> int:
    from bpe_openai import get_encoding

    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return len(get_encoding("cl100k_base").encode(text))


def model_read(tool: dict[str, Any]) -> dict[str, Any]:
    return {key: tool[key] for key in ("name", "description", "inputSchema") if key in tool}


def measure(profile: str) -> dict[str, Any]:
    tools = listed_tools(profile)
    return {
        "profile": profile,
        "tools": [
            {
                "name": tool["name"],
                "description": tokens(tool.get("description", "")),
                "input": tokens(tool["inputSchema"]),
                "output": tokens(tool.get("outputSchema", {})),
            }
            for tool in tools
        ],
        "model_read": tokens([model_read(tool) for tool in tools]),
        "whole": tokens({"tools": tools}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="append", help="profiles to list (default: default, tiny)")
    args = parser.parse_args()
    for profile in args.profile or ["default", "tiny"]:
        result = measure(profile)
        print(f"profile {profile}: tools/list in cl100k tokens")
        print(f"  {'tool':<22}{'description':>12}{'input':>8}{'output':>8}")
        for row in result["tools"]:
            print(f"  {row['name']:<22}{row['description']:>12}{row['input']:>8}{row['output']:>8}")
        print(
            f"  model-read (name, description, input schema): {result['model_read']} "
            f"(target <= {MODEL_READ_TARGET})"
        )
        print(f"  whole tools/list result: {result['whole']} (target <= {WHOLE_TARGET})")


if __name__ == "__main__":
    main()
