"""The reference chapter's SDXL example: DPM++ sampling, a negative prompt, classifier-free guidance.

Meant for Stable Diffusion XL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0, model `sdxl`) at
1024 px, 30 steps, guidance 7.5, on a GPU. On the offline `tiny` profile it runs the same
pipeline class with random weights at 64 px and a few steps, so the picture is noise.

    python examples/sdxl_garden.py                      # tiny-sdxl, 64 px, 4 steps
    python examples/sdxl_garden.py --profile default    # sdxl, 1024 px, 30 steps (GPU)
"""

from __future__ import annotations

import anyio
from _client import call, connect, hint, options, save

MODEL = {"default": "sdxl", "tiny": "tiny-sdxl"}


async def main() -> None:
    parser = options(__doc__)
    parser.add_argument("--steps", type=int, help="default: 30 (default profile), 4 (tiny)")
    parser.add_argument(
        "--size", type=int, help="width and height; default: 1024 (default profile), 64 (tiny)"
    )
    args = parser.parse_args()
    real = args.profile == "default"
    async with connect(args) as client:
        made = await call(
            client,
            "generate_image",
            {
                "model": MODEL[args.profile],
                "prompt": "A serene Japanese garden with cherry blossoms, watercolor style",
                "negative_prompt": "blurry, low quality, distorted",
                "scheduler": "dpm++",  # diffusers' DPMSolverMultistepScheduler (DPM-Solver++ 2M)
                "steps": args.steps or (30 if real else 4),
                "guidance_scale": 7.5,  # higher = closer to the prompt, less varied
                "width": args.size or (1024 if real else 64),
                "height": args.size or (1024 if real else 64),
                "seed": 42,
            },
        )
        await save(client, made["images"][0]["uri"], args.output / "japanese_garden.png")
    hint(args, "stabilityai/stable-diffusion-xl-base-1.0")


if __name__ == "__main__":
    anyio.run(main)
