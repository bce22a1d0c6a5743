"""Generate an image, check it with CLIP and a VLM, then compare two seeds.

Starts the server over stdio with the real MCP client, as Claude Desktop would.
Meant for SDXL base 1.0, CLIP ViT-L/14 and LLaVA 1.6 on a GPU; on the offline `tiny` profile the
models have random weights, so the images are noise and the description word salad.

    python examples/generate_and_verify.py                    # tiny offline models (noise images)
    python examples/generate_and_verify.py --profile default  # SDXL, CLIP ViT-L/14, LLaVA 1.6 (GPU)
"""

from __future__ import annotations

import anyio
from _client import call, connect, hint, options

PROMPT = "A serene Japanese garden with cherry blossoms, watercolor style"


async def main() -> None:
    args = options(__doc__).parse_args()
    async with connect(args) as client:
        made = await call(
            client,
            "generate_image",
            {"prompt": PROMPT, "negative_prompt": "blurry, low quality, distorted", "seed": 42},
        )
        first = made["images"][0]["uri"]

        labels = ["a garden", "a city street", "a portrait"]
        await call(client, "clip_classify", {"image": first, "labels": labels})
        await call(client, "describe_image", {"image": first})

        other = await call(client, "generate_image", {"prompt": PROMPT, "seed": 43})
        second = other["images"][0]["uri"]
        await call(client, "compare_images", {"image_a": first, "image_b": second})
    hint(args, "SDXL base 1.0, CLIP ViT-L/14 and LLaVA 1.6")


if __name__ == "__main__":
    anyio.run(main)
