"""The reference chapter's CLIP example: zero-shot classification over three labels.

CLIP embeds the image and each label in one space; the probabilities are a softmax over the
scaled cosine similarities. The photo is scikit-image's `chelsea` (a cat), or your own with --image.
Meant for OpenAI CLIP ViT-L/14 (openai/clip-vit-large-patch14, model `clip-vit-l-14`), which puts
almost all the probability on the cat. On the offline `tiny` profile CLIP has random weights, so
the probabilities are arbitrary.

    python examples/clip_zero_shot.py                      # tiny-clip
    python examples/clip_zero_shot.py --profile default    # clip-vit-l-14 (CPU is enough)
    python examples/clip_zero_shot.py --image ~/photo.jpg  # a file under your home directory
"""

from __future__ import annotations

from pathlib import Path

import anyio
from _client import call, connect, data_uri, hint, options
from PIL import Image

LABELS = ["a photo of a cat", "a photo of a dog", "a photo of a car"]


def chelsea() -> str:
    from skimage import data  # scikit-image: pip install scikit-image (or pass --image)

    return data_uri(Image.fromarray(data.chelsea()))


async def main() -> None:
    parser = options(__doc__)
    parser.add_argument("--image", type=Path, help="a photo to classify (default: scikit-image's chelsea)")
    args = parser.parse_args()
    image = str(args.image.expanduser().resolve()) if args.image else chelsea()
    async with connect(args) as client:
        result = await call(client, "clip_classify", {"image": image, "labels": LABELS})
    for entry in result["labels"]:  # highest first
        print(f"{entry['label']}: {entry['score']:.3f}")
    hint(args, "openai/clip-vit-large-patch14")


if __name__ == "__main__":
    anyio.run(main)
