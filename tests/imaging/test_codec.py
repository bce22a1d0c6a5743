from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from multimodal_mcp.config import Limits
from multimodal_mcp.errors import ImageInputError
from multimodal_mcp.imaging.codec import (
    decode_base64_payload,
    decode_image,
    encode_png,
    encode_preview,
    generation_text_chunks,
    png_text,
)

from helpers import b64_png, photo, swapped_profile


def _encoded(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_png_jpeg_and_webp_decode_to_rgb() -> None:
    img = photo("astronaut", 48)
    for fmt in ("PNG", "JPEG", "WEBP"):
        decoded = decode_image(_encoded(img, fmt), max_pixels=10_000)
        assert decoded.source_format == fmt and decoded.image.mode == "RGB" and decoded.image.size == (48, 48)


def test_formats_outside_the_allow_list_are_refused_by_content() -> None:
    tiff = _encoded(photo("astronaut", 16), "TIFF")
    with pytest.raises(ImageInputError, match="accepted: PNG, JPEG, WEBP, GIF"):
        decode_image(tiff, max_pixels=10_000)
    with pytest.raises(ImageInputError, match="not an image"):
        decode_image(b"%PDF-1.7 not an image", max_pixels=10_000)


def test_a_truncated_image_is_an_input_error_not_a_crash() -> None:
    data = _encoded(photo("astronaut", 64), "PNG")
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        decode_image(data[: len(data) // 2], max_pixels=10_000)


def test_the_pixel_cap_is_checked_before_decoding() -> None:
    big = _encoded(Image.new("RGB", (200, 100)), "PNG")
    with pytest.raises(ImageInputError, match="200x100 = 20000 pixels; the limit is 10000"):
        decode_image(big, max_pixels=10_000)


def test_only_the_first_frame_of_an_animation_is_used() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buf.getvalue(), max_pixels=100)
    assert decoded.image.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_base64_length_is_checked_before_decoding() -> None:
    with pytest.raises(ImageInputError, match="limit is 1000 bytes"):
        decode_base64_payload("A" * 4000, max_bytes=1000)


def test_data_uris_and_bare_base64_decode_to_the_same_bytes() -> None:
    raw = _encoded(photo("astronaut", 8), "PNG")
    b64 = base64.b64encode(raw).decode()
    assert decode_base64_payload(b64, max_bytes=10**6) == raw
    assert decode_base64_payload(f"data:image/png;base64,{b64}", max_bytes=10**6) == raw
    assert decode_base64_payload(base64.urlsafe_b64encode(raw).decode(), max_bytes=10**6) == raw


def test_base64_with_whitespace_without_padding_or_in_both_alphabets_decodes_to_the_same_bytes() -> None:
    png = _encoded(photo("astronaut", 8), "PNG")
    raw = png + b"\x00" * (-len(png) % 3) + b"\xfb\xff"  # its base64 ends in "+/8="
    b64 = base64.b64encode(raw).decode()
    assert "+" in b64 and "/" in b64 and b64.endswith("=")
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))  # MIME line breaks
    assert decode_base64_payload(f"data:image/png;base64,{wrapped}\n", max_bytes=10**6) == raw
    assert decode_base64_payload(b64.rstrip("="), max_bytes=10**6) == raw
    mixed = b64.replace("+", "-", 1)  # one URL-safe character among standard ones
    assert decode_base64_payload(mixed, max_bytes=10**6) == raw
    with pytest.raises(ImageInputError, match="not valid base64"):
        decode_base64_payload("data:image/png;base64,", max_bytes=1000)


def test_malformed_base64_and_non_base64_data_uris_are_refused() -> None:
    with pytest.raises(ImageInputError, match="not valid base64"):
        decode_base64_payload("data:image/png;base64,@@@@", max_bytes=1000)
    with pytest.raises(ImageInputError, match="must be base64 encoded"):
        decode_base64_payload("data:image/svg+xml,<svg/>", max_bytes=1000)
    with pytest.raises(ImageInputError, match="not valid base64"):
        decode_base64_payload(b64_png(photo("astronaut", 8))[:-3] + "!!!", max_bytes=10**6)


def test_generation_parameters_round_trip_through_png_text_chunks_deterministically() -> None:
    meta = {"prompt": "a cat", "negative_prompt": "dog", "seed": 3, "model": "m", "parameters": {"steps": 2}}
    img = photo("chelsea", 16)
    first = encode_png(img, generation_text_chunks(meta))
    assert first == encode_png(img, generation_text_chunks(meta))
    text = png_text(first)
    assert text["parameters"].splitlines()[:2] == ["a cat", "Negative prompt: dog"]
    assert "Seed: 3" in text["parameters"] and '"seed":3' in text["multimodal-mcp"]


def test_previews_fit_their_byte_budget_and_side_limit() -> None:
    big = photo("astronaut", None)  # 512x512
    preview = encode_preview(big, max_side=256, max_bytes=12_000, fmt="jpeg")
    assert len(preview.data) <= 12_000 and max(preview.width, preview.height) <= 256
    decoded = Image.open(io.BytesIO(preview.data))
    assert decoded.format == "JPEG" and decoded.size == (preview.width, preview.height)
    webp = encode_preview(big, max_side=768, max_bytes=200_000, fmt="webp")
    assert webp.mime_type == "image/webp" and Image.open(io.BytesIO(webp.data)).format == "WEBP"


# --- hostile inputs -------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes, extra: bytes = b"") -> bytes:
    """A grayscale 8-bit PNG assembled by hand, so its header can say anything."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _compressible_png(side: int) -> bytes:
    """A real, valid all-black PNG of side x side, compressed row by row (a few hundred KB)."""
    z = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return _png(side, side, body)


def test_a_png_declaring_30000x30000_is_refused_from_its_header() -> None:
    bomb = _png(30000, 30000, zlib.compress(b"\x00" * 100))
    assert len(bomb) < 200
    with pytest.raises(ImageInputError, match="limit is 40000000"):
        decode_image(bomb, max_pixels=40_000_000)


def test_a_real_highly_compressible_png_over_the_cap_is_refused_before_decoding() -> None:
    bomb = _compressible_png(7000)  # 49 Mpx of zeros in well under 1 MB
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageInputError, match="7000x7000 = 49000000 pixels; the limit is 40000000"):
        decode_image(bomb, max_pixels=40_000_000)
    with pytest.raises(ImageInputError, match="the limit is 1000000"):
        decode_image(_compressible_png(1200), max_pixels=1_000_000)


def test_the_pixel_cap_stays_below_pillows_bomb_limit() -> None:
    assert Limits().max_input_pixels < Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValidationError, match="less than or equal to 80000000"):
        Limits(max_input_pixels=Image.MAX_IMAGE_PIXELS)


@pytest.mark.parametrize(
    "content",
    [
        b"8BPS\x00\x01" + b"\x00" * 64,  # Photoshop
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",  # EPS
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n",  # PDF
        b"SIMPLE  =                    T" + b" " * 50,  # FITS
        b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 32,  # JPEG 2000
        b"icns\x00\x00\x00\x10" + b"\x00" * 8,  # ICNS
        b"\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x08\x00\x08\x00\x18\x00" + b"\x00" * 192,  # TGA
        b"BM" + b"\x00" * 60,  # BMP
    ],
    ids=["psd", "eps", "pdf", "fits", "jp2", "icns", "tga", "bmp"],
)
def test_disallowed_formats_are_refused_by_content_whatever_they_are_named(
    content: bytes, tmp_path: Path
) -> None:
    named_png = tmp_path / "photo.png"
    named_png.write_bytes(content)
    with pytest.raises(ImageInputError, match="not an image in an accepted format"):
        decode_image(named_png.read_bytes(), max_pixels=10_000)


def test_real_tga_and_tiff_files_named_png_are_refused() -> None:
    img = photo("astronaut", 16)
    for fmt in ("TGA", "TIFF", "BMP", "ICO"):
        with pytest.raises(ImageInputError, match="accepted: PNG, JPEG, WEBP, GIF"):
            decode_image(_encoded(img, fmt), max_pixels=10_000)


def test_a_polyglot_decodes_as_its_image_and_keeps_none_of_the_payload(tmp_path: Path) -> None:
    payload = b"PK\x03\x04" + b"<script>alert(1)</script>" * 40  # a zip/HTML tail after the PNG
    polyglot = _encoded(photo("astronaut", 16), "PNG") + payload
    decoded = decode_image(polyglot, max_pixels=10_000)
    assert decoded.source_format == "PNG" and decoded.image.size == (16, 16)
    reencoded = encode_png(decoded.image)
    assert b"<script>" not in reencoded and b"PK\x03\x04" not in reencoded
    # The other way round (a PDF wrapping a PNG) is a PDF, and refused.
    with pytest.raises(ImageInputError, match="not an image in an accepted format"):
        decode_image(b"%PDF-1.4\n" + _encoded(photo("astronaut", 16), "PNG"), max_pixels=10_000)


def test_truncated_pngs_and_jpegs_are_input_errors() -> None:
    for fmt in ("PNG", "JPEG", "WEBP", "GIF"):
        data = _encoded(photo("astronaut", 64), fmt)
        for cut in (len(data) // 2, 40, 12):
            with pytest.raises(ImageInputError, match=r"corrupt or truncated|not an image"):
                decode_image(data[:cut], max_pixels=10_000)


def test_a_header_that_lies_about_the_size_is_an_input_error() -> None:
    # IHDR says 64x64 but the pixel data holds 8x8.
    liar = _png(64, 64, zlib.compress(b"\x00" * 9 * 8))
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        decode_image(liar, max_pixels=10_000)
    # A JPEG whose frame header claims 60000x60000: refused from the header, nothing allocated.
    jpeg = bytearray(_encoded(photo("astronaut", 16), "JPEG"))
    sof = jpeg.find(b"\xff\xc0")
    struct.pack_into(">HH", jpeg, sof + 5, 60000, 60000)
    with pytest.raises(ImageInputError, match="pixels; the limit is 10000"):
        decode_image(bytes(jpeg), max_pixels=10_000)


def test_only_the_first_frame_of_animated_gif_webp_and_apng_is_used() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for fmt in ("GIF", "WEBP", "PNG"):
        animated = _encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50)
        decoded = decode_image(animated, max_pixels=100)
        r, g, b = decoded.image.convert("RGB").getpixel((4, 4))  # type: ignore[misc]
        assert r > 200 and g < 50 and b < 50, fmt  # red, the first frame (WebP is lossy)
        assert getattr(decoded.image, "n_frames", 1) == 1


def test_pngs_with_huge_text_chunks_are_refused_or_stripped() -> None:
    pixels = zlib.compress(b"\x00" * 9 * 8)
    # 200 MB of compressed text in a 200 KB chunk: Pillow stops at its text limit.
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (200 * 1024 * 1024)))
    with pytest.raises(ImageInputError, match="corrupt or truncated"):
        decode_image(_png(8, 8, pixels, ztxt), max_pixels=100)
    # 8 MB of plain text: the pixels decode, and the text is not carried into the stored PNG.
    text = _chunk(b"tEXt", b"Comment\x00" + b"A" * (8 * 1024 * 1024))
    decoded = decode_image(_png(8, 8, pixels, text), max_pixels=100)
    assert decoded.image.size == (8, 8)
    assert len(encode_png(decoded.image)) < 1000


def test_base64_over_the_limit_is_refused_without_decoding_it() -> None:
    huge = "data:image/png;base64," + "QUFB" * 5_000_000  # 20 MB of base64
    with pytest.raises(ImageInputError, match="limit is 1048576 bytes"):
        decode_base64_payload(huge, max_bytes=1024 * 1024)


def test_keeps_original_only_when_the_bytes_decode_to_exactly_the_image_used() -> None:
    from PIL import ImageCms

    img = photo("astronaut", 32)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    upright, rotated = Image.Exif(), Image.Exif()
    upright[0x0112], rotated[0x0112] = 1, 6
    rgba = img.convert("RGBA")
    rgba.putalpha(100)
    kept = {
        "png": _encoded(img, "PNG"),
        "jpeg": _encoded(img, "JPEG"),
        "webp": _encoded(rgba, "WEBP"),
        "grayscale png": _encoded(img.convert("L"), "PNG"),
        "palette png with a colour key": _encoded(img.convert("P"), "PNG", transparency=3),
        "upright exif": _encoded(img, "JPEG", exif=upright.tobytes()),
        "srgb icc profile": _encoded(img, "JPEG", icc_profile=srgb),  # nothing to convert
        "rotated exif jpeg": _encoded(img, "JPEG", exif=rotated.tobytes()),  # stored with its tag
    }
    frames = [img, photo("coffee", 32)]
    not_kept = {
        "another icc profile": _encoded(img, "JPEG", icc_profile=swapped_profile()),
        "rotated exif png": _encoded(img, "PNG", exif=rotated.tobytes()),
        "rotated exif webp": _encoded(img, "WEBP", exif=rotated.tobytes()),
        "16-bit png": _encoded(Image.new("I;16", (8, 8), 40000), "PNG"),
        "cmyk jpeg": _encoded(img.convert("CMYK"), "JPEG"),
        "gif": _encoded(img, "GIF"),
        "animated webp": _encoded(img, "WEBP", save_all=True, append_images=frames[1:]),
        "apng": _encoded(img, "PNG", save_all=True, append_images=frames[1:]),
    }
    for name, data in {**kept, **not_kept}.items():
        assert decode_image(data, max_pixels=10_000).keeps_original == (name in kept), name
    # What does not keep its original is staged (stored as sent, converted in the background) when a
    # conversion alone makes the pixels: not a rotated PNG or WebP, a GIF or an animation's frame.
    staged = {"another icc profile", "16-bit png", "cmyk jpeg"}
    profiled = {
        "png with a profile": _encoded(img, "PNG", icc_profile=swapped_profile()),
        "webp with a profile": _encoded(img, "WEBP", icc_profile=swapped_profile()),
    }
    for name, data in {**kept, **not_kept, **profiled}.items():
        expected = name in staged or name in profiled
        assert decode_image(data, max_pixels=10_000).staged == expected, name


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_exif_transpose_does(fmt: str, orientation: int) -> None:
    from PIL import ImageOps

    img = photo("astronaut", 64).crop((0, 0, 64, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encoded(img, fmt, exif=exif.tobytes(), **({"lossless": True} if fmt == "WEBP" else {}))
    with Image.open(io.BytesIO(data)) as original:
        expected = ImageOps.exif_transpose(original).convert("RGB")
    decoded = decode_image(data, max_pixels=10_000)
    assert decoded.orientation == orientation and decoded.full_size == expected.size
    assert decoded.image.tobytes() == expected.tobytes()
