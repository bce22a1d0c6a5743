"""Previews: the cost of the default preview format against WebP, on 1024 px images.

Every image a result shows inline is downscaled and encoded by ``encode_preview`` (the server's
code, in this process) to ``[server] preview_max_side`` (768 px) within the result's byte budget.
This times it for the default ``preview_format`` and for WebP, on the same 1024x1024 images
(scikit-image's photos, upscaled), alternating, and prints the medians, the bytes, and the ratio
default / WebP (target: at most 1.0, the default is the cheaper one to make; an earlier measurement
found WebP previews 10x the cost of JPEG for 10% fewer bytes).

    python bench/previews.py            # 5 photos x 7 rounds
    python bench/previews.py --quick    # 5 photos x 2 rounds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, median, record_ratio, table

SIDE = 1024
TARGET = 1.0


def photos() -> list[Any]:
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
        arrays = [getattr(data, name)() for name in names]
        images = [Image.fromarray(a).convert("RGB") for a in arrays]
    except ImportError:
        rng = np.random.default_rng(0)
        images = [Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)) for _ in range(5)]
    return [im.resize((SIDE, SIDE), Image.Resampling.BICUBIC) for im in images]


def main(args: argparse.Namespace) -> float:
    from multimodal_mcp.config import ServerSettings
    from multimodal_mcp.imaging.codec import encode_preview

    fields = ServerSettings.model_fields
    default_format = fields["preview_format"].default
    max_side = fields["preview_max_side"].default
    max_bytes = fields["result_max_bytes"].default // 2
    images = photos()
    import os

    import PIL

    print("== previews: the default preview format vs WebP, encode_preview on 1024 px images ==")
    print(f"cpu:          {cpu_model()}, {os.cpu_count()} logical cores; Pillow {PIL.__version__}")
    print(f"settings:     preview_max_side {max_side}, byte budget {max_bytes}, default {default_format}")
    print(f"workload:     {len(images)} photos {SIDE}x{SIDE}, {args.rounds} rounds, formats alternating")
    print()
    times: dict[str, list[float]] = {default_format: [], "webp": []}
    sizes: dict[str, list[int]] = {default_format: [], "webp": []}
    formats = list(times)
    for r in range(args.rounds):
        for fmt in formats if r % 2 == 0 else formats[::-1]:
            started = time.perf_counter()
            made = [encode_preview(im, max_side=max_side, max_bytes=max_bytes, fmt=fmt) for im in images]
            times[fmt].append((time.perf_counter() - started) / len(images))
            sizes[fmt] = [len(p.data) for p in made]
    rows = [
        [fmt, f"{median(times[fmt]) * 1000:.1f}", f"{sum(sizes[fmt]) / len(sizes[fmt]) / 1024:.0f}"]
        for fmt in formats
    ]
    print(table(["format", "median ms per preview", "mean KiB"], rows))
    ratio = median(times[default_format]) / median(times["webp"])
    byte_ratio = sum(sizes[default_format]) / sum(sizes["webp"])
    verdict = "pass" if ratio <= TARGET else "FAIL"
    print(
        f"\nratio {default_format} / webp time: {ratio:.2f}x (target <= {TARGET}x: {verdict}); "
        f"bytes {byte_ratio:.2f}x"
    )
    record_ratio(
        f"preview ({default_format}, the default) of a {SIDE} px image",
        ratio,
        alternative="a WebP preview",
        target=TARGET,
        note=f"bytes {byte_ratio:.2f}x",
    )
    return ratio


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds per format (default 7; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 2 if args.quick else 7
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


if __name__ == "__main__":
    started = time.perf_counter()
    main(parse_args())
    print(f"\ntotal script time {time.perf_counter() - started:.0f} s")
