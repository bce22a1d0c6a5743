from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from multimodal_mcp.imaging.codec import decode_image
from multimodal_mcp.imaging.compact import (
    Unstrippable,
    compact_input,
    encode_lossless,
    mime_of,
    strip_jpeg,
    strip_png,
    strip_webp,
)

from helpers import photo

MAX_PIXELS = 40_000_000


def _encoded(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data, max_pixels=MAX_PIXELS).image)


def _exif(orientation: int = 1, description: str = "a secret place") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010E] = description
    return exif.tobytes()


def big_icc_profile(size: int) -> bytes:
    """A real sRGB profile padded with random bytes to ``size`` (its header's size field set to it)."""
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    padded = profile + os.urandom(size - len(profile))
    return struct.pack(">I", len(padded)) + padded[4:]


def test_a_jpeg_keeps_its_own_bytes_minus_exif_xmp_and_comments() -> None:
    img = photo("astronaut", 64)
    xmp = b"<x:xmpmeta>where and who</x:xmpmeta>"
    raw = _encoded(img, "JPEG", quality=90, exif=_exif(), comment=b"made on my laptop", xmp=xmp)
    stored = compact_input(raw, decode_image(raw, max_pixels=MAX_PIXELS))
    assert stored.format == "jpeg" and stored.mime_type == "image/jpeg"
    for secret in (b"a secret place", b"made on my laptop", b"where and who", b"Exif\x00\x00"):
        assert secret in raw and secret not in stored.data
    assert b"JFIF\x00" in stored.data  # APP0 JFIF is kept
    assert len(stored.data) < len(raw)
    assert np.array_equal(_pixels(stored.data), _pixels(raw))
    plain = _encoded(img, "JPEG", quality=90)  # the same encoder without metadata: the same scans
    assert stored.data[-2000:] == plain[-2000:]


def test_an_adobe_jpeg_keeps_its_app14_segment_and_decodes_the_same() -> None:
    raw = _encoded(photo("coffee", 32).convert("CMYK"), "JPEG", quality=95)
    assert b"Adobe" in raw
    # CMYK is converted by the decoder, so it is not kept as such; the stripper alone keeps APP14.
    stripped = strip_jpeg(raw)
    assert b"Adobe" in stripped.data
    assert np.array_equal(_pixels(stripped.data), _pixels(raw))


def test_a_progressive_jpeg_with_restart_markers_strips_losslessly() -> None:
    raw = _encoded(photo("chelsea", 96), "JPEG", progressive=True, exif=_exif(), comment=b"hello")
    stored = strip_jpeg(raw)
    assert b"hello" not in stored.data and np.array_equal(_pixels(stored.data), _pixels(raw))
    trailer = raw + b"PK\x03\x04 a zip appended after EOI"
    assert strip_jpeg(trailer).data == stored.data  # nothing after EOI is kept


def test_a_png_keeps_its_image_chunks_and_drops_text_time_and_exif() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "private words")
    info.add_itxt("XML:com.adobe.xmp", "<xmp>private xmp</xmp>", zip=True)
    img = photo("coffee", 32).convert("P")
    raw = _encoded(img, "PNG", pnginfo=info, transparency=0, exif=_exif(), dpi=(300, 300))
    stored = compact_input(raw, decode_image(raw, max_pixels=MAX_PIXELS))
    assert stored.format == "png"
    assert b"private words" in raw and b"private words" not in stored.data
    for chunk in (b"tEXt", b"iTXt", b"eXIf", b"pHYs"):
        assert chunk in raw and chunk not in stored.data
    for chunk in (b"PLTE", b"tRNS", b"IDAT"):
        assert chunk in stored.data
    assert np.array_equal(_pixels(stored.data), _pixels(raw))
    assert _pixels(raw).shape == (32, 32, 4)  # the colour key made it RGBA, kept as the tRNS chunk


def test_a_webp_drops_exif_xmp_and_fixes_its_header() -> None:
    rgba = photo("astronaut", 48).convert("RGBA")
    rgba.putalpha(128)
    for lossless in (False, True):
        raw = _encoded(rgba, "WEBP", lossless=lossless, exif=_exif(), xmp=b"<xmp>private</xmp>")
        stored = compact_input(raw, decode_image(raw, max_pixels=MAX_PIXELS))
        assert stored.format == "webp" and stored.mime_type == "image/webp"
        assert b"EXIF" in raw and b"EXIF" not in stored.data and b"private" not in stored.data
        assert struct.unpack("<I", stored.data[4:8])[0] == len(stored.data) - 8
        flags = stored.data[20] if stored.data[12:16] == b"VP8X" else 0
        assert flags & (0x20 | 0x08 | 0x04) == 0 and flags & 0x10  # no ICC/EXIF/XMP, alpha kept
        assert np.array_equal(_pixels(stored.data), _pixels(raw))


def test_an_icc_profile_is_never_copied_so_a_tiny_image_stays_tiny() -> None:
    profile = big_icc_profile(1024 * 1024)
    for fmt in ("JPEG", "WEBP"):
        raw = _encoded(Image.new("RGB", (16, 16), (200, 30, 30)), fmt, icc_profile=profile)
        decoded = decode_image(raw, max_pixels=MAX_PIXELS)
        assert len(raw) > len(profile)  # an sRGB profile: the bytes are kept, its segments stripped
        stored = compact_input(raw, decoded)
        assert len(stored.data) < 2000, (fmt, len(stored.data))
        with Image.open(io.BytesIO(stored.data)) as back:
            assert "icc_profile" not in back.info
            assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(decoded.image))


@pytest.mark.parametrize("orientation", range(2, 9))
def test_a_turned_jpeg_keeps_its_bytes_and_only_its_orientation_tag(orientation: int) -> None:
    # A phone's portrait photo: stored as sent, minus its metadata, with the one tag that turns it.
    img = photo("astronaut", 64).crop((0, 0, 64, 40))  # not square: a turn shows in the size
    raw = _encoded(img, "JPEG", quality=90, exif=_exif(orientation=orientation))
    decoded = decode_image(raw, max_pixels=MAX_PIXELS)
    stored = compact_input(raw, decoded)
    assert stored.format == "jpeg" and b"a secret place" not in stored.data
    with Image.open(io.BytesIO(stored.data)) as back:
        exif = back.getexif()
        assert dict(exif) == {0x0112: orientation}  # nothing but the orientation
    assert decoded.image.size == ((40, 64) if orientation >= 5 else (64, 40))
    assert np.array_equal(_pixels(stored.data), np.asarray(decoded.image))  # upright, the same pixels
    again = compact_input(stored.data, decode_image(stored.data, max_pixels=MAX_PIXELS))
    assert again.data == stored.data  # storing the stored file again changes nothing


def test_a_jpeg_with_nothing_to_drop_is_kept_without_a_copy() -> None:
    raw = _encoded(photo("astronaut", 64), "JPEG", quality=90)
    stored = compact_input(raw, decode_image(raw, max_pixels=MAX_PIXELS))
    assert stored.data is raw
    with_exif = _encoded(photo("astronaut", 64), "JPEG", quality=90, exif=_exif())
    assert compact_input(with_exif, decode_image(with_exif, max_pixels=MAX_PIXELS)).data != with_exif


def test_pixels_that_cannot_keep_their_bytes_are_stored_losslessly_and_not_larger_than_png() -> None:
    img = photo("chelsea", None)
    rotated = _encoded(img, "PNG", exif=_exif(orientation=6))  # a PNG is stored upright
    decoded = decode_image(rotated, max_pixels=MAX_PIXELS)
    stored = compact_input(rotated, decoded)
    assert stored.format == "webp"  # the rotated pixels, losslessly
    assert np.array_equal(_pixels(stored.data), np.asarray(decoded.image))
    png = _encoded(decoded.image, "PNG", compress_level=6)
    assert len(stored.data) < len(png)


def test_lossless_encoding_keeps_transparent_pixels_colours_and_other_modes_as_png() -> None:
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (24, 24, 4), dtype=np.uint8), "RGBA")
    webp = encode_lossless(rgba)
    with Image.open(io.BytesIO(webp.data)) as back:
        assert webp.format == "webp" and np.array_equal(np.asarray(back), np.asarray(rgba))
    gray = Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8), "L")
    gray.info["icc_profile"] = b"not to be copied"
    png = encode_lossless(gray)
    with Image.open(io.BytesIO(png.data)) as back:
        assert png.format == "png" and back.mode == "L" and "icc_profile" not in back.info
        assert np.array_equal(np.asarray(back), np.asarray(gray))


def test_a_structure_the_stripper_does_not_follow_falls_back_to_the_pixels() -> None:
    raw = _encoded(photo("coffee", 16), "PNG")
    with pytest.raises(Unstrippable):
        strip_png(raw[:-12])  # no IEND
    with pytest.raises(Unstrippable):
        strip_jpeg(b"\xff\xd8\xff\xe0\x00")
    with pytest.raises(Unstrippable):
        strip_webp(b"RIFF\x04\x00\x00\x00WEBP")
    odd = raw[:33] + struct.pack(">I", 1) + b"AbCd" + b"x" + b"\x00" * 4 + raw[33:]  # unknown critical
    decoded = decode_image(raw, max_pixels=MAX_PIXELS)
    stored = compact_input(odd, decoded)
    assert stored.format == "webp" and np.array_equal(_pixels(stored.data), np.asarray(decoded.image))


def test_mime_types_come_from_the_bytes() -> None:
    img = photo("coffee", 8)
    assert [mime_of(_encoded(img, f)) for f in ("PNG", "JPEG", "WEBP")] == [
        "image/png",
        "image/jpeg",
        "image/webp",
    ]
    assert mime_of(b"GIF89a") is None


def _exif_segment(tiff: bytes) -> bytes:
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _odd_model_tag_exif(orientation: int) -> bytes:
    """An EXIF block whose Model tag (0x0110) is typed RATIONAL, as some makers write, and Orientation."""
    head = b"MM\x00\x2a" + struct.pack(">I", 8)
    ifd = struct.pack(">H", 2) + struct.pack(">HHII", 0x0110, 5, 1, 38)
    ifd += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    return head + ifd + struct.pack(">II", 1, 1)


def test_a_turned_jpeg_with_an_oddly_typed_exif_tag_is_read_upright_not_refused() -> None:
    # Only the orientation is read of the EXIF block; nothing else in it can fail the read.
    img = photo("astronaut", 64).crop((0, 0, 64, 40))
    plain = _encoded(img, "JPEG", quality=90)
    raw = plain[:2] + _exif_segment(_odd_model_tag_exif(6)) + plain[2:]
    decoded = decode_image(raw, max_pixels=MAX_PIXELS)
    assert decoded.image.size == (40, 64) and decoded.keeps_original
    expected = np.asarray(Image.open(io.BytesIO(plain)).convert("RGB").transpose(Image.Transpose.ROTATE_270))
    assert np.array_equal(np.asarray(decoded.image), expected)
    stored = compact_input(raw, decoded)
    assert np.array_equal(_pixels(stored.data), expected)


def test_an_orientation_only_in_xmp_is_not_applied_or_stored() -> None:
    # Viewers turn a photo by its EXIF tag; an XMP tiff:Orientation alone leaves it as it is.
    img = photo("astronaut", 64).crop((0, 0, 64, 40))
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    raw = _encoded(img, "JPEG", quality=90, xmp=xmp)
    decoded = decode_image(raw, max_pixels=MAX_PIXELS)
    assert decoded.image.size == (64, 40) and decoded.orientation == 1
    stored = compact_input(raw, decoded)
    assert b"Exif" not in stored.data and b"tiff:Orientation" not in stored.data


def test_a_phone_mpo_keeps_its_first_picture_as_a_jpeg() -> None:
    # A JPEG with a Multi-Picture index and a second image (an HDR gain map, a depth map) is stored
    # as its first picture's JPEG, minus the index and the rest, and decoded at reduced scale.
    img = photo("astronaut", 256).crop((0, 0, 256, 192))
    buf = io.BytesIO()
    img.save(buf, "MPO", save_all=True, append_images=[img.resize((64, 48))], exif=_exif(6), quality=90)
    raw = buf.getvalue()
    assert Image.open(io.BytesIO(raw)).format == "MPO"
    decoded = decode_image(raw, max_pixels=MAX_PIXELS)
    assert decoded.keeps_original and decoded.source_format == "JPEG" and decoded.image.size == (192, 256)
    stored = compact_input(raw, decoded)
    assert stored.format == "jpeg" and b"MPF" not in stored.data and len(stored.data) < len(raw)
    assert Image.open(io.BytesIO(stored.data)).format == "JPEG"
    assert np.array_equal(_pixels(stored.data), np.asarray(decoded.image))
    reduced = decode_image(raw, max_pixels=MAX_PIXELS, min_side=48)
    assert reduced.image.size == (48, 64)  # read at 1/4: the draft works for an MPO too


def test_only_the_fields_decoders_read_of_app0_and_app14_are_kept() -> None:
    # A JFIF thumbnail, or bytes hidden after the fields or in segments decoders skip, are not
    # copied; the pixels are unchanged.
    raw = _encoded(photo("astronaut", 64), "JPEG", quality=90)
    assert raw[2:4] == b"\xff\xe0"
    (length,) = struct.unpack(">H", raw[4:6])
    jfif = raw[6 : 4 + length]
    thumbnail = jfif[:12] + b"\x02\x02" + b"\x11\x22\x33" * 4 + b"hidden after the thumbnail"
    fat = raw[:4] + struct.pack(">H", len(thumbnail) + 2) + thumbnail + raw[4 + length :]
    adobe = b"Adobe\x00\x64\x00\x00\x00\x00\x01" + b"hidden after the transform"
    fat = fat[:2] + b"\xff\xee" + struct.pack(">H", len(adobe) + 2) + adobe + fat[2:]
    # A segment decoders skip (DNL) carries no pixels either.
    sos = fat.index(b"\xff\xda")
    fat = fat[:sos] + b"\xff\xdc\x00\x0chidden DNL" + fat[sos:]
    decoded = decode_image(fat, max_pixels=MAX_PIXELS)
    stored = compact_input(fat, decoded)
    assert b"hidden" not in stored.data and b"\x11\x22\x33" not in stored.data
    assert b"JFIF\x00" in stored.data and b"Adobe" in stored.data
    assert np.array_equal(_pixels(stored.data), np.asarray(decoded.image))


def test_the_orientation_segment_comes_after_app0_even_when_a_dropped_segment_came_first() -> None:
    raw = _encoded(photo("astronaut", 64), "JPEG", quality=90, exif=_exif(6))
    comment = b"\xff\xfe\x00\x07first"  # a COM segment before APP0, as some writers put it
    stored = strip_jpeg(raw[:2] + comment + raw[2:], orientation=6)
    assert stored.data[2:4] == b"\xff\xe0"  # SOI, APP0 (JFIF: right after SOI), then the EXIF segment
    (length,) = struct.unpack(">H", stored.data[4:6])
    assert stored.data[4 + length : 4 + length + 2] == b"\xff\xe1" and b"first" not in stored.data
