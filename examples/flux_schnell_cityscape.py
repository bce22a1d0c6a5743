"""The reference chapter's flow-matching example: FLUX.1 [schnell] in 4 steps with guidance 0.

Flow matching learns straight paths from noise to images, so a few steps suffice; schnell is
guidance-distilled, so classifier-free guidance is off (guidance_scale 0, no negative prompt).
Meant for black-forest-labs/FLUX.1-schnell (model `flux-schnell`) at 1024 px on a GPU. On the
offline `tiny` profile the same Flux pipeline runs with random weights at 64 px: noise.

    python examples/flux_schnell_cityscape.py                    # tiny-flux, 64 px
    python examples/flux_schnell_cityscape.py --profile default  # flux-schnell, 1024 px (GPU)
"""

from __future__ import annotations

import anyio
from _client import call, connect, hint, options, save

MODEL = {"default": "flux-schnell", "tiny": "tiny-flux"}


async def main() -> None:
    parser = options(__doc__)
    parser.add_argument(
        "--size", type=int, help="a multiple of 16; default: 1024 (default profile), 64 (tiny)"
    )
    args = parser.parse_args()
    size = args.size or (1024 if args.profile == "default" else 64)
    async with connect(args) as client:
        made = await call(
            client,
            "generate_image",
            {
                "model": MODEL[args.profile],
                "prompt": "A cyberpunk cityscape at sunset, neon reflections on wet streets",
                "steps": 4,
                "guidance_scale": 0.0,
                "width": size,
                "height": size,
                "seed": 2024,
            },
        )
        await save(client, made["images"][0]["uri"], args.output / "cyberpunk_city.png")
    hint(args, "black-forest-labs/FLUX.1-schnell")


if __name__ == "__main__":
    anyio.run(main)
