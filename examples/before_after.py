"""Compare a photo before and after an edit: numbers, changed regions, a heat map and a narrative.

The reference chapter asks a multimodal model to "compare these two images and describe what
changed". Here the edit is an inpainting (controlled_generate repaints a masked box of scikit-image's
`chelsea` photo, or of your own with --image); compare_images(describe=True) then reports SSIM,
changed pixels, CLIP similarity, boxes around the changes, a difference heat map, and a narrative
from the vision-language model, which sees both images side by side. Inpainting keeps every
pixel outside the mask, so every changed region lies inside it.
Meant for Stable Diffusion 1.5 inpainting (model `sd15`), CLIP ViT-L/14 and LLaVA 1.6 on a GPU.
On the offline `tiny` profile the models have random weights: the repainted box is noise and the
narrative is word salad, but the numbers and boxes are real measurements.

    python examples/before_after.py                     # tiny-sd15, tiny-clip, tiny-vlm at 96 px
    python examples/before_after.py --profile default   # sd15, clip-vit-l-14, llava-1.6-mistral-7b
"""

from __future__ import annotations

from pathlib import Path

import anyio
from _client import call, connect, data_uri, hint, options, save
from PIL import Image, ImageDraw


def photo(path: Path | None, width: int) -> Image.Image:
    """The photo at ``width`` px, both sides multiples of 8 (init images must be)."""
    if path is None:
        from skimage import data  # scikit-image: pip install scikit-image (or pass --image)

        image = Image.fromarray(data.chelsea())
    else:
        image = Image.open(path).convert("RGB")
    height = max(8, round(image.height * width / image.width / 8) * 8)
    return image.resize((width, height), Image.Resampling.LANCZOS)


async def main() -> None:
    parser = options(__doc__)
    parser.add_argument("--image", type=Path, help="the photo to edit (default: scikit-image's chelsea)")
    parser.add_argument(
        "--width", type=int, help="a multiple of 8; default: 512 (default profile), 96 (tiny)"
    )
    args = parser.parse_args()
    before = photo(args.image, args.width or (512 if args.profile == "default" else 96))
    w, h = before.size
    box = (w * 3 // 8, h * 5 // 8, w * 5 // 8, h - 1)  # the lower middle: the cat's chest
    mask = Image.new("L", before.size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)  # white = repaint

    async with connect(args) as client:
        edit = await call(
            client,
            "controlled_generate",
            {
                "prompt": "a red bow tie",
                "init_image": data_uri(before),
                "mask_image": data_uri(mask),
                "seed": 3,
            },
        )
        before_uri, after_uri = edit["init_image"]["uri"], edit["images"][0]["uri"]
        diff = await call(
            client, "compare_images", {"image_a": before_uri, "image_b": after_uri, "describe": True}
        )
        for uri, name in ((before_uri, "before"), (after_uri, "after"), (diff["diff_image"]["uri"], "diff")):
            await save(client, uri, args.output / f"{name}.png")

    regions = [
        (r["x"], r["y"], r["x"] + r["width"] - 1, r["y"] + r["height"] - 1) for r in diff["changed_regions"]
    ]
    inside = all(
        box[0] <= x0 and box[1] <= y0 and x1 <= box[2] and y1 <= box[3] for x0, y0, x1, y1 in regions
    )
    print(f"mask box {box}; changed regions (x0, y0, x1, y1): {regions}")
    print(f"every changed region inside the mask: {inside}")
    hint(args, "stable-diffusion-v1-5 inpainting with CLIP ViT-L/14 and LLaVA 1.6")


if __name__ == "__main__":
    anyio.run(main)
