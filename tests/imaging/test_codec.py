from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from multimodal_mcp.errors import ImageInputError
from multimodal_mcp.imaging.codec import (
    decode_base64_payload,
    decode_image,
    encode_png,
    encode_preview,
    generation_text_chunks,
    png_text,
)

from helpers import b64_png, photo


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
    with pytest.raises(ImageInputError, match="accepted: PNG, JPEG, WEBP, GIF, BMP"):
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
