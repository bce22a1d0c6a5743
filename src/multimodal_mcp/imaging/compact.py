"""What an input image is stored as: compact, lossless, without the sender's metadata.

When the bytes a client sent decode to exactly the pixels the server uses
(:attr:`~multimodal_mcp.imaging.codec.DecodedImage.keeps_original`), they are kept in their own
format with foreign metadata removed segment by segment, so a 4 MB JPEG stays about 4 MB:

- JPEG: only the segments that make the picture (SOF, DHT, DAC, DQT, DRI, SOS and the scans) are
  copied, with APP0 JFIF (the 14 bytes decoders read, not its thumbnail) and APP14 "Adobe" (its 12
  defined bytes: how the colour channels are coded). APP1-APP15 (EXIF, XMP, ICC, MPF, Photoshop,
  ...), COM, DNL and the other segments decoders skip, and anything after EOI (an MPO's further
  images: a gain map, a depth map) are dropped; what is kept is copied byte for byte. A photo whose
  EXIF orientation turns it (a phone's portrait shot) gets back an EXIF segment with that one tag,
  so the stored file is the photo as sent, upright in any viewer that honours EXIF, rather than its
  pixels decoded whole, turned and encoded again (seconds for 12 megapixels); the store applies the
  tag when it reads it.
- PNG: only IHDR, PLTE, IDAT, IEND, tRNS, gAMA, cHRM and sRGB are kept; text, eXIf, tIME, pHYs, iCCP
  and other ancillary chunks, and anything after IEND, are dropped. An unknown critical chunk stops
  the stripping (the pixels are re-encoded instead).
- WebP: only VP8X, ALPH, VP8 and VP8L chunks are kept (ICCP, EXIF, XMP and unknown chunks dropped),
  the VP8X flags are corrected to match and the RIFF size rewritten. Nothing is re-encoded, so a
  lossy WebP stays lossy-small and decodes to the same pixels.

An image whose pixels need a conversion alone (a JPEG with an ICC profile other than sRGB, as phones
tag their photos Display P3, or in CMYK; an upright single-frame PNG or WebP with such a profile, as
a Mac tags its screenshots, or a 16-bit PNG) is *staged*: kept for now in the same way plus its ICC
profile (a JPEG's APP2 ``ICC_PROFILE`` segments, a PNG's iCCP chunk, a WebP's ICCP chunk and flag),
so that the call that sent it need not wait seconds for the conversion and the lossless encoding of
millions of pixels; the store converts it in the background and then keeps the converted pixels,
losslessly and without the profile (see :mod:`.staging`).

Otherwise (a colour conversion, a rotation, a bit-depth change, a GIF or other frames dropped) the
decoded pixels are encoded losslessly: lossless WebP (``method=1``, ``quality=25``, ``exact=True``)
for RGB and RGBA images up to WebP's 16383 px side, else PNG at ``compress_level=6``. Measured on
four images (a noisy 2048 px photo, a screenshot, an RGBA photo, a clean 1800x1200 photo) this WebP
setting is 9-68% smaller than PNG level 6 in about the same or less time; level 9 or WebP's
slower methods gain under 1% for several times the time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import struct
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from multimodal_mcp.imaging.codec import DecodedImage

StoredFormat = Literal["png", "jpeg", "webp"]
EXTENSIONS: dict[StoredFormat, str] = {"png": "png", "jpeg": "jpg", "webp": "webp"}
MIME_TYPES: dict[StoredFormat, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PIL_FORMATS: dict[StoredFormat, str] = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

WEBP_MAX_SIDE = 16383
PNG_KEPT_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB"})
WEBP_KEPT_CHUNKS = frozenset({b"VP8X", b"ALPH", b"VP8 ", b"VP8L"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MARKER_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The marker that ends a JPEG scan's entropy-coded data: a 0xFF followed by neither 0x00 (a stuffed
byte), 0xD0-0xD7 (a restart marker) nor 0xFF (a fill byte, the marker follows it)."""
# VP8X flag bits (WebP container spec): ICC profile, alpha, EXIF, XMP, animation.
_VP8X_ICC, _VP8X_EXIF, _VP8X_XMP, _VP8X_ANIMATION = 0x20, 0x08, 0x04, 0x02


@dataclass(frozen=True)
class Encoded:
    """Bytes to store and their format."""

    data: bytes
    format: StoredFormat
    sha256: str | None = None
    """The hex SHA-256 of ``data`` when already known (the client's bytes kept as they were)."""
    staged: bool = False
    """A JPEG kept with its ICC profile until the store converts it (see :mod:`.staging`)."""

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.format]


def mime_of(data: bytes) -> str | None:
    """The MIME type of stored image bytes by their signature (PNG, JPEG or WebP), else None."""
    if data.startswith(_PNG_SIGNATURE):
        return MIME_TYPES["png"]
    if data.startswith(b"\xff\xd8\xff"):
        return MIME_TYPES["jpeg"]
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return MIME_TYPES["webp"]
    return None


class Unstrippable(ValueError):
    """The bytes do not follow the structure the stripper walks (the caller re-encodes instead)."""


def compact_input(raw: bytes | None, decoded: DecodedImage) -> Encoded:
    """The stored form of an input: ``raw`` stripped of metadata when it decodes to exactly
    ``decoded.image`` (at full scale), else ``decoded.image`` encoded losslessly. Never raises on odd
    bytes: a structure the stripper does not follow falls back to the lossless encoding.

    Raises:
        NotStorable: ``decoded`` was decoded at reduced scale and ``raw`` cannot be kept.
    """
    if raw is not None and (decoded.keeps_original or decoded.staged):
        kept = kept_form(raw, decoded.source_format, decoded.orientation, staged=decoded.staged)
        if kept is not None:
            return kept
    if decoded.reduced:
        raise NotStorable("a reduced-scale decode is stored only as its original bytes; decode it whole")
    return encode_lossless(decoded.image)


def kept_form(
    raw: bytes,
    source_format: str,
    orientation: int = 1,
    raw_sha256: str | None = None,
    *,
    staged: bool = False,
) -> Encoded | None:
    """``raw`` as the store keeps it when its decode keeps the original (see :func:`compact_input`):
    stripped of metadata by ``source_format`` (Pillow's name: JPEG, PNG, WEBP), a JPEG keeping its
    EXIF ``orientation`` (and, ``staged``, its ICC profile: see :attr:`Encoded.staged`); with its
    SHA-256 (``raw_sha256`` when nothing was stripped). None for a format without a stripper or a
    structure the stripper does not follow. Pure: any thread may run it, e.g. while another decodes
    the pixels (see :meth:`.inputs.ImageResolver.resolve`)."""
    try:
        if source_format == "JPEG":
            kept = strip_jpeg(raw, orientation=orientation, keep_profile=staged)
        elif source_format == "PNG":
            kept = strip_png(raw, keep_profile=staged)
        elif source_format == "WEBP":
            kept = strip_webp(raw, keep_profile=staged)
        else:
            return None
    except Unstrippable:
        return None
    if kept.data is raw and raw_sha256 is not None:
        return dataclasses.replace(kept, sha256=raw_sha256, staged=staged)
    return dataclasses.replace(kept, sha256=hashlib.sha256(kept.data).hexdigest(), staged=staged)


class NotStorable(ValueError):
    """The decoded image is smaller than the original (decoded at reduced scale) and the original
    bytes cannot be kept: the caller decodes it whole to store it."""


def encode_lossless(image: Image.Image) -> Encoded:
    """``image`` losslessly, with no metadata at all (no ICC profile, EXIF, text or colour key).

    Lossless WebP for RGB and RGBA images whose sides fit WebP, else PNG (compress_level 6), which
    also keeps other modes (L, LA, P, 1, I;16) as they are.
    """
    buf = io.BytesIO()
    if image.mode in ("RGB", "RGBA") and max(image.size) <= WEBP_MAX_SIDE:
        # exact: keep the colour of fully transparent pixels (libwebp may otherwise change them).
        # The WebP writer reads ICC, EXIF and XMP from its arguments only, never from image.info.
        image.save(buf, format="WEBP", lossless=True, quality=25, method=1, exact=True)
        return Encoded(buf.getvalue(), "webp")
    # The PNG writer falls back to image.info for these two; None turns that off.
    image.save(buf, format="PNG", compress_level=6, icc_profile=None, transparency=None)
    return Encoded(buf.getvalue(), "png")


def strip_jpeg(data: bytes, *, orientation: int = 1, keep_profile: bool = False) -> Encoded:
    """A JPEG without EXIF, XMP, ICC, comments and other APPn segments (of APP0 JFIF and APP14 Adobe
    only the fields decoders read: no JFIF thumbnail); scans copied byte for byte, nothing after EOI
    (an MPO's further images). ``data`` itself when it has nothing to drop.

    ``orientation`` (EXIF, 2-8): an EXIF segment holding only that tag is written after SOI (and
    APP0), so the stored JPEG still decodes upright in every viewer that honours EXIF (and in this
    server); 1 writes none. ``keep_profile``: the APP2 ``ICC_PROFILE`` segments are kept too (a staged
    JPEG: see :attr:`Encoded.staged`).

    Raises:
        Unstrippable: not a well-formed JPEG marker sequence.
    """
    n = len(data)
    if data[:2] != b"\xff\xd8":
        raise Unstrippable("no SOI marker")
    out = [b"\xff\xd8"]
    exif = orientation_segment(orientation) if 2 <= orientation <= 8 else None
    changed = exif is not None
    i = 2
    while True:
        if i >= n or data[i] != 0xFF:
            raise Unstrippable("expected a marker")
        start = i
        while i < n and data[i] == 0xFF:  # fill bytes before a marker (dropped)
            i += 1
        changed = changed or i - start > 1
        if i >= n:
            raise Unstrippable("truncated marker")
        marker = data[i]
        i += 1
        if marker == 0xD9:  # EOI
            if not changed and i == n:
                return Encoded(data, "jpeg")  # nothing dropped: no copy
            out.append(b"\xff\xd9")
            return Encoded(b"".join(out), "jpeg")
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0xD8):
            raise Unstrippable("a standalone marker outside a scan")
        if i + 2 > n:
            raise Unstrippable("truncated segment")
        (length,) = struct.unpack(">H", data[i : i + 2])
        if length < 2 or i + length > n:
            raise Unstrippable("segment length out of range")
        payload = data[i + 2 : i + length]
        kept = _kept_jpeg_payload(marker, payload, keep_profile)
        if kept is not None:
            if exif is not None and marker != 0xE0:  # after SOI and APP0 (JFIF), before the rest kept
                out.append(exif)
                exif = None
            out.append(bytes((0xFF, marker)) + struct.pack(">H", len(kept) + 2) + kept)
        changed = changed or kept != payload
        i += length
        if marker == 0xDA:  # SOS: entropy-coded data up to the next marker that is not RSTn
            end = _scan_end(data, i)
            out.append(data[i:end])
            i = end


def orientation_segment(orientation: int) -> bytes:
    """An APP1 EXIF segment with one tag, Orientation (0x0112) = ``orientation``: a big-endian TIFF
    header and an IFD0 of one entry (SHORT, count 1, the value in the first two of its four bytes)."""
    tiff = b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    payload = b"Exif\x00\x00" + tiff + struct.pack(">I", 0)  # no next IFD
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


_PICTURE_MARKERS = frozenset({*range(0xC0, 0xD0), 0xDA, 0xDB, 0xDD}) - {0xC8}
"""Segments a decoder needs for the pixels: SOF0-SOF15, DHT (C4) and DAC (CC) among them, SOS, DQT
and DRI. Every other segment (APPn, COM, DNL, DHP, EXP, JPGn) is skipped by libjpeg's decoder."""


def _kept_jpeg_payload(marker: int, payload: bytes, keep_profile: bool = False) -> bytes | None:
    """What a segment keeps of its payload: all of it for the segments that make the picture (and,
    ``keep_profile``, for APP2 ``ICC_PROFILE``), the fields decoders read of APP0 JFIF (14 bytes:
    version, density; its thumbnail and anything after it dropped) and APP14 Adobe (12 bytes: the
    colour transform), nothing of any other segment."""
    if keep_profile and marker == 0xE2 and payload.startswith(b"ICC_PROFILE\x00"):
        return payload
    if marker == 0xE0:
        return payload[:12] + b"\x00\x00" if payload.startswith(b"JFIF\x00") and len(payload) >= 14 else None
    if marker == 0xEE:
        return payload[:12] if payload.startswith(b"Adobe") and len(payload) >= 12 else None
    return payload if marker in _PICTURE_MARKERS else None


def _scan_end(data: bytes, i: int) -> int:
    """Where the entropy-coded data starting at ``i`` ends: the next 0xFF that starts a marker
    (not a stuffed 0xFF00, a restart marker or a fill byte)."""
    found = _MARKER_AFTER_SCAN.search(data, i)  # at C speed: a photo's scan holds thousands of 0xFF
    if found is None:
        raise Unstrippable("scan data runs to the end without EOI")
    return found.start()


def strip_png(data: bytes, *, keep_profile: bool = False) -> Encoded:
    """A PNG with only the chunks that make its pixels (see the module docstring), and its iCCP
    chunk when ``keep_profile`` (a staged PNG: :attr:`Encoded.staged`); chunks copied byte for byte,
    CRCs included.

    Raises:
        Unstrippable: a malformed chunk sequence, no IEND, or an unknown critical chunk.
    """
    if not data.startswith(_PNG_SIGNATURE):
        raise Unstrippable("no PNG signature")
    out = [_PNG_SIGNATURE]
    i, n = len(_PNG_SIGNATURE), len(data)
    while i + 12 <= n:
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        end = i + 12 + length
        if end > n:
            raise Unstrippable("chunk runs past the end")
        if kind in PNG_KEPT_CHUNKS or (keep_profile and kind == b"iCCP"):
            out.append(data[i:end])
        elif not kind[0] & 0x20:  # an unknown critical chunk (upper-case first letter), e.g. APNG's
            raise Unstrippable(f"unknown critical chunk {kind!r}")
        i = end
        if kind == b"IEND":
            return Encoded(b"".join(out), "png")
    raise Unstrippable("no IEND chunk")


def strip_webp(data: bytes, *, keep_profile: bool = False) -> Encoded:
    """A WebP with only its image chunks (VP8X, ALPH, VP8, VP8L), VP8X's ICC/EXIF/XMP flags cleared
    and the RIFF size rewritten; chunk data copied byte for byte. ``keep_profile``: its ICCP chunk and
    flag are kept too (a staged WebP: :attr:`Encoded.staged`).

    Raises:
        Unstrippable: not a well-formed RIFF/WEBP file, or an animated one.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise Unstrippable("no RIFF WEBP header")
    (riff_size,) = struct.unpack("<I", data[4:8])
    n = min(len(data), 8 + riff_size)
    chunks: list[bytes] = []
    i = 12
    while i + 8 <= n:
        kind = data[i : i + 4]
        (size,) = struct.unpack("<I", data[i + 4 : i + 8])
        if i + 8 + size > n:
            raise Unstrippable("chunk runs past the end")
        chunk = data[i : i + 8 + size] + b"\x00" * (size & 1)  # chunks are padded to an even size
        if kind == b"VP8X":
            if size < 10:
                raise Unstrippable("short VP8X chunk")
            flags = chunk[8]
            if flags & _VP8X_ANIMATION:
                raise Unstrippable("animated WebP")
            flags &= ~((0 if keep_profile else _VP8X_ICC) | _VP8X_EXIF | _VP8X_XMP) & 0xFF
            chunks.append(chunk[:8] + bytes((flags,)) + chunk[9:])
        elif kind in WEBP_KEPT_CHUNKS or (keep_profile and kind == b"ICCP"):
            chunks.append(chunk)
        i += len(chunk)
    if not any(c[:4] in (b"VP8 ", b"VP8L") for c in chunks):
        raise Unstrippable("no image chunk")
    body = b"WEBP" + b"".join(chunks)
    return Encoded(b"RIFF" + struct.pack("<I", len(body)) + body, "webp")
