"""What the image store keeps of an input: stored bytes / bytes sent, now and as it used to be.

Before, every input was decoded and re-encoded as a PNG at compress_level 1, with whatever the decoder
left in the image's metadata (an ICC profile was copied byte for byte). Now the sender's own bytes are
kept, metadata stripped, when they decode to exactly the pixels used, else the pixels are encoded
losslessly (imaging/compact.py). Both are measured here in the same run, on inputs built in code:

- a noisy photo-like JPEG (scikit-image's astronaut upscaled to --side px with Gaussian noise,
  quality 92, with EXIF), the same JPEG with EXIF orientation 6 (a phone's portrait photo: kept
  with its orientation tag), and the same photo tagged Display P3 (its colour must be converted to
  sRGB: kept staged, as its JPEG with the profile, until the store's background conversion encodes
  the converted pixels losslessly; both rows are shown, the second with the conversion's time);
- a PNG (scikit-image's coffee upscaled, level 6, with a text chunk);
- a lossy WebP of the noisy photo (quality 80, with EXIF and XMP);
- a 16x16 JPEG carrying a 16 MB ICC profile.

For each: the bytes sent, stored before and stored now, the two ratios, the stored format, whether the
stored file decodes to exactly the pixels the server uses, and the time to prepare it.

    python bench/store_ratio.py [--side 4000]
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, PngImagePlugin
from skimage import data as skdata

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_model, display_p3_profile

from multimodal_mcp.imaging.codec import decode_image, encode_png
from multimodal_mcp.imaging.compact import PIL_FORMATS, compact_input, encode_lossless

MAX_PIXELS = 80_000_000


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Example Camera Co."
    exif[0x010E] = "a description a phone would write"
    return exif.tobytes()


def noisy_photo(side: int, seed: int = 0) -> Image.Image:
    """scikit-image's astronaut upscaled to ``side`` px square, with sensor-like Gaussian noise."""
    img = Image.fromarray(skdata.astronaut()).resize((side, side), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(seed).normal(0, 6, (side, side, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def big_icc(size: int) -> bytes:
    """A real sRGB profile padded with random bytes to ``size`` (the header's size field set to it)."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    padded = profile + os.urandom(size - len(profile))
    return struct.pack(">I", len(padded)) + padded[4:]


def inputs(side: int) -> dict[str, bytes]:
    photo = noisy_photo(side)
    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "an image editor")
    coffee = Image.fromarray(skdata.coffee())
    coffee = coffee.resize((side, side * coffee.height // coffee.width), Image.Resampling.BICUBIC)
    return {
        "noisy photo JPEG": _save(photo, "JPEG", quality=92, exif=_exif(1)),
        "same JPEG, EXIF-rotated": _save(photo, "JPEG", quality=92, exif=_exif(6)),
        "same photo, Display P3": _save(
            photo, "JPEG", quality=92, exif=_exif(1), icc_profile=display_p3_profile()
        ),
        "PNG": _save(coffee, "PNG", compress_level=6, pnginfo=text),
        "lossy WebP": _save(photo, "WEBP", quality=80, exif=_exif(1), xmp=b"<x:xmpmeta>...</x:xmpmeta>"),
        "16x16 + 16 MB ICC": _save(
            Image.new("RGB", (16, 16), (200, 40, 40)), "JPEG", icc_profile=big_icc(16_000_000)
        ),
    }


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB" if n >= 1000 else f"{n} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=4000, help="side of the photo-like inputs (px)")
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}, {os.cpu_count()} logical cores; Pillow {Image.__version__}")
    print(f"photo-like inputs: {args.side}x{args.side} px ({args.side * args.side / 1e6:.0f} Mpx)\n")
    columns = f"{'sent':>9} {'before':>9} {'ratio':>7} {'now':>9} {'ratio':>8}"
    header = f"{'input':<25} {columns}  stored  exact  prepare"
    print(header)
    print("-" * len(header))
    for name, raw in inputs(args.side).items():
        decoded = decode_image(raw, max_pixels=MAX_PIXELS)
        # What the store wrote for every input until now: a level-1 PNG of the decoded pixels, with
        # the input's ICC profile copied into it (the decoder kept it in the image's info).
        with Image.open(io.BytesIO(raw)) as original:
            profile = original.info.get("icc_profile")
        old = decoded.image.copy()
        if profile:
            old.info["icc_profile"] = profile
        before = encode_png(old)
        t = time.perf_counter()
        now = compact_input(raw, decoded)
        seconds = time.perf_counter() - t
        rows = [(name, now, seconds)]
        if now.staged:  # what the background conversion then stores instead, and its time
            t = time.perf_counter()
            rows.append(("  converted later", encode_lossless(decoded.image), time.perf_counter() - t))
        for label, stored, spent in rows:
            if stored.staged:
                pixels = decode_image(stored.data, max_pixels=MAX_PIXELS).image  # converted as on read
            else:
                with Image.open(io.BytesIO(stored.data), formats=[PIL_FORMATS[stored.format]]) as back:
                    pixels = ImageOps.exif_transpose(back).convert(decoded.image.mode)  # JPEG orientation
            exact = np.array_equal(np.asarray(pixels), np.asarray(decoded.image))
            kind = f"{stored.format} (staged)" if stored.staged else stored.format
            print(
                f"{label:<25} {_size(len(raw)):>9} {_size(len(before)):>9} {len(before) / len(raw):7.3g}"
                f" {_size(len(stored.data)):>9} {len(stored.data) / len(raw):8.3g}  {kind:<6}  {exact!s:<5}"
                f"  {spent:5.2f} s"
            )


if __name__ == "__main__":
    main()
