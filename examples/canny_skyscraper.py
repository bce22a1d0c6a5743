"""The reference chapter's ControlNet example: keep a building's outline, restyle it.

Edges come from the reference photo (OpenCV canny, thresholds 100/200); the ControlNet steers
generation with them at conditioning scale 0.8. The edge map is returned so you can see it.
Meant for Stable Diffusion 1.5 (model `sd15`) with lllyasviel/control_v11p_sd15_canny, 30 steps,
on a GPU. On the offline `tiny` profile the models have random weights: the picture is noise.

    python examples/canny_skyscraper.py                                   # tiny models, drawn building
    python examples/canny_skyscraper.py --profile default --image reference_building.jpg
"""

from __future__ import annotations

from pathlib import Path

import anyio
from _client import call, connect, data_uri, hint, options, save
from PIL import Image, ImageDraw


def drawn_building() -> Image.Image:
    """A stand-in reference photo: a tower with windows."""
    img = Image.new("RGB", (256, 256), (135, 170, 210))
    draw = ImageDraw.Draw(img)
    draw.rectangle((88, 40, 168, 250), fill=(90, 90, 100))
    for y in range(56, 236, 24):
        for x in (100, 124, 148):
            draw.rectangle((x, y, x + 10, y + 12), fill=(230, 220, 150))
    return img


async def main() -> None:
    parser = options(__doc__)
    parser.add_argument("--image", type=Path, help="a reference photo (must be under an allowed root)")
    args = parser.parse_args()
    reference = str(args.image.expanduser().resolve()) if args.image else data_uri(drawn_building())
    async with connect(args) as client:
        result = await call(
            client,
            "controlled_generate",
            {
                "prompt": "A futuristic glass skyscraper, photorealistic",
                "control_image": reference,
                "control_type": "canny",
                "low_threshold": 100,
                "high_threshold": 200,
                "conditioning_scale": 0.8,
                "seed": 7,
            },
        )
        await save(client, result["images"][0]["uri"], args.output / "skyscraper.png")
        await save(client, result["control_image"]["uri"], args.output / "skyscraper_edges.png")
    hint(args, "stable-diffusion-v1-5 with lllyasviel/control_v11p_sd15_canny")


if __name__ == "__main__":
    anyio.run(main)
