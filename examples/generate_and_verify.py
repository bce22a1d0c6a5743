"""Generate an image, check it with CLIP and a VLM, then compare two seeds.

Starts the server over stdio with the real MCP client, as Claude Desktop would.

    python examples/generate_and_verify.py                    # tiny offline models (noise images)
    python examples/generate_and_verify.py --profile default  # SDXL, CLIP ViT-L/14, LLaVA 1.6 (GPU)
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio
from mcp import Client, StdioServerParameters


async def main(profile: str) -> None:
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "multimodal_mcp", "serve", "--profile", profile, "--log-level", "WARNING"],
        env=dict(os.environ),
    )
    async with Client(server, read_timeout_seconds=900) as client:
        made = await client.call_tool(
            "generate_image",
            {
                "prompt": "A serene Japanese garden with cherry blossoms, watercolor style",
                "negative_prompt": "blurry, low quality, distorted",
                "seed": 42,
            },
        )
        first = made.structured_content["images"][0]["uri"]
        print(made.content[0].text)

        labels = ["a garden", "a city street", "a portrait"]
        verdict = await client.call_tool("clip_classify", {"image": first, "labels": labels})
        print(verdict.content[0].text)

        described = await client.call_tool("describe_image", {"image": first})
        print(described.content[0].text)

        other = await client.call_tool(
            "generate_image",
            {"prompt": "A serene Japanese garden with cherry blossoms, watercolor style", "seed": 43},
        )
        second = other.structured_content["images"][0]["uri"]
        comparison = await client.call_tool("compare_images", {"image_a": first, "image_b": second})
        print(comparison.content[0].text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny", choices=["tiny", "default"])
    anyio.run(main, parser.parse_args().profile)
