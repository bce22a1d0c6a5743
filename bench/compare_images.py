"""compare_images over MCP against scikit-image's own metrics on the same pair, in this process.

Our side: one ``compare_images`` call through the real server over stdio (both images passed as
``image://`` ids, uploaded once before timing) on the ``tiny`` profile: SSIM, the changed-pixel
share, boxes around changed regions, a heat map stored and previewed in the result, and a CLIP
similarity (the tiny CLIP). The alternative: what a script does with scikit-image alone, on the
decoded arrays already in memory: ``structural_similarity`` (Gaussian 11x11 window, sigma 1.5,
population statistics: the settings ``compare_images`` documents) on the luminance, the per-pixel
maximum channel difference thresholded at 16, and ``measure.label`` + ``regionprops`` for the boxes.
The two sides alternate; medians are compared (target: the whole tool call at most the cost of
scikit-image's metrics alone, ratio <= 1.0). The SSIM of both sides is printed as a check.

    python bench/compare_images.py            # 1024 px pair, 9 rounds
    python bench/compare_images.py --quick    # 3 rounds
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_CACHE,
    call_tool,
    median,
    print_header,
    record_ratio,
    server_parameters,
    table,
    temp_dir,
    write_config,
)

SIDE = 1024
THRESHOLD = 16
TARGET = 1.0


def image_pair() -> tuple[Any, Any]:
    """A 1024 px photo and an edited copy (a pasted patch, a drawn box, a little noise)."""
    import numpy as np
    from PIL import Image, ImageDraw

    try:
        from skimage import data

        base = Image.fromarray(data.astronaut()).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    except ImportError:
        y, x = np.mgrid[0:SIDE, 0:SIDE]
        base = Image.fromarray(np.stack([x // 4, y // 4, (x + y) // 8], -1).astype(np.uint8))
    edited = base.copy()
    edited.paste(base.crop((100, 100, 300, 300)), (600, 650))
    ImageDraw.Draw(edited).rectangle((120, 700, 360, 900), outline=(255, 0, 0), width=8)
    noise = np.random.default_rng(0).integers(-3, 4, size=(SIDE, SIDE, 3))
    edited = Image.fromarray((np.asarray(edited, dtype=np.int16) + noise).clip(0, 255).astype(np.uint8))
    return base, edited


def scikit_image_side(a: Any, b: Any) -> tuple[float, float, int]:
    """SSIM, changed share and region count with scikit-image alone (arrays already decoded)."""
    import numpy as np
    from skimage import measure
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    gray_a, gray_b = rgb2gray(a) * 255, rgb2gray(b) * 255
    similarity = structural_similarity(
        gray_a, gray_b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)
    changed = diff > THRESHOLD
    regions = measure.regionprops(measure.label(changed, connectivity=2))
    boxes = [r.bbox for r in regions if r.area >= 0.001 * changed.size]
    return float(similarity), float(changed.mean()), len(boxes)


def data_uri(image: Any) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


async def main(args: argparse.Namespace) -> float:
    import numpy as np

    print_header("compare_images over MCP vs scikit-image's metrics in-process", "cpu")
    base, edited = image_pair()
    arr_a, arr_b = np.asarray(base), np.asarray(edited)
    print(f"pair:         {SIDE}x{SIDE} photo and an edited copy; {args.rounds} rounds, alternating")
    print()
    ours: list[float] = []
    theirs: list[float] = []
    with temp_dir("mmcp-bench-compare-", keep=args.keep) as tmp:
        config = write_config(
            tmp / "server.toml",
            store_dir=tmp / "store",
            tiny_dir=args.cache_dir / "tiny",
            models={},
            defaults={},
        )
        async with AsyncExitStack() as stack:
            from mcp import Client

            session = Client(server_parameters(config), read_timeout_seconds=600)
            client = await stack.enter_async_context(session)
            first = await call_tool(
                client, "compare_images", {"image_a": data_uri(base), "image_b": data_uri(edited)}
            )
            refs = {"image_a": first["image_a"]["uri"], "image_b": first["image_b"]["uri"]}
            await call_tool(client, "compare_images", refs)  # warm: the ids' pictures are cached
            skimage_result = await anyio.to_thread.run_sync(scikit_image_side, arr_a, arr_b)
            for r in range(args.rounds):
                for side in ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours"):
                    started = time.perf_counter()
                    if side == "ours":
                        result = await call_tool(client, "compare_images", refs)
                        ours.append(time.perf_counter() - started)
                    else:
                        skimage_result = await anyio.to_thread.run_sync(scikit_image_side, arr_a, arr_b)
                        theirs.append(time.perf_counter() - started)
    mo, mt = median(ours), median(theirs)
    rows = [
        ["compare_images over MCP (image:// ids)", f"{mo * 1000:.0f}", f"{result['ssim']:.4f}",
         f"{result['pixel_difference']:.4f}", len(result["changed_regions"])],
        ["scikit-image in-process (decoded arrays)", f"{mt * 1000:.0f}", f"{skimage_result[0]:.4f}",
         f"{skimage_result[1]:.4f}", skimage_result[2]],
    ]  # fmt: skip
    print(table(["side", "median ms", "SSIM", "changed share", "regions"], rows))
    ratio = mo / mt
    verdict = "pass" if ratio <= TARGET else "FAIL"
    print(f"\nratio compare_images / scikit-image: {ratio:.2f}x (target <= {TARGET}x: {verdict})")
    print("(ours also embeds both images with CLIP, and stores and previews the heat map)")
    record_ratio(
        f"compare_images, {SIDE} px pair over MCP",
        ratio,
        alternative="scikit-image SSIM + diff + regionprops in-process",
        target=TARGET,
    )
    return ratio


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds per side (default 9; 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"tiny models (default {DEFAULT_CACHE})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary store and config")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.quick else 9
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


if __name__ == "__main__":
    started = time.perf_counter()
    anyio.run(main, parse_args())
    print(f"\ntotal script time {time.perf_counter() - started:.0f} s")
