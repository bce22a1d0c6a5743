"""Decoding untrusted image bytes and encoding PNGs and previews. Pure Pillow, no torch."""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import io
import json
import re
import struct
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pybase64
from anyio import NoEventLoopError, from_thread
from PIL import Image, PngImagePlugin

from multimodal_mcp.errors import ImageInputError
from multimodal_mcp.imaging.admission import DecodeBudget, current_call_pixels
from multimodal_mcp.imaging.normalize import IGNORED_PROFILE, is_srgb_profile, picture, standardize_with_notes

# Formats whose decoders see heavy use and little CVE churn. Checked by content (the magic bytes,
# then Pillow's identification limited to these plugins), never by a name or a MIME type the caller
# claims. GIF is kept because agents meet it on the web; only its first frame is used. Everything
# else (PSD, TIFF, EPS, PDF, FITS, JPEG 2000, TGA, ICNS, BMP, ...) is refused.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF")
_MAGIC = re.compile(rb"\x89PNG\r\n\x1a\n|\xff\xd8\xff|GIF8[79]a|RIFF....WEBP", re.S)

_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.split() splits on, in ASCII
_DATA_URI = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I
)


_AFTER_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")
"""Where a JPEG scan's entropy-coded data ends: a 0xFF not followed by 0x00 (a stuffed byte) or by
0xD0-0xD7 (a restart marker)."""

MAX_JPEG_SCANS = 100
"""Scans a JPEG may have. Each scan of a progressive JPEG is a pass over all of the image's
coefficients, so a small hostile file repeating its scans thousands of times costs minutes of CPU;
standard progressive encoders write about 10."""
MAX_ASPECT = 32.0
"""Default longest-to-shortest side ratio of an input (see ``Limits.max_input_aspect``)."""
_BYTES_PER_PIXEL_IN_FLIGHT = 16
"""Decoded bytes per pixel a decode holds at its peak: the decoder's buffer (up to 4 bands, 16-bit
samples for greys) plus the standardized copy and a conversion in between."""

DEFAULT_DECODE_BUDGET = DecodeBudget(1024 * 1024 * 1024)
"""Shared by decodes that are given no budget of their own (the server gives its own)."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded input in the standard form of :func:`~multimodal_mcp.imaging.normalize.standardize`."""

    image: Image.Image
    source_format: str
    keeps_original: bool = False
    """Whether the original bytes decode to exactly ``image``, their EXIF orientation applied: no
    colour conversion (no ICC profile but sRGB), no bit-depth change, a single frame, and no EXIF
    rotation except in a JPEG (whose stored form keeps the orientation tag: :attr:`orientation`).
    The store may then keep those bytes (metadata stripped) instead of re-encoding the pixels."""
    staged: bool = False
    """Whether the original bytes decode to ``image`` through a conversion alone: a JPEG with an ICC
    profile other than sRGB (phones tag their photos Display P3) or in CMYK, a single-frame PNG or
    WebP with such a profile (a Mac's screenshot) or 16 bits per sample, upright. The store then keeps
    them for now with their profile (and a JPEG's orientation) and nothing else, and converts them in
    the background (:mod:`.staging`), instead of encoding ``image`` before the call can answer."""
    orientation: int = 1
    """The EXIF orientation (1-8) of the original bytes, applied to ``image``: 1 is upright, 6 a
    phone held upright (turned 90 degrees clockwise for display)."""
    full_size: tuple[int, int] = (0, 0)
    """Width and height the file declares (after EXIF orientation); ``image`` is smaller when the
    decoder was allowed to reduce it (``min_side``)."""
    notes: tuple[str, ...] = ()
    """What normalization changed (bit depth scaled, colour profile converted, ...)."""

    @property
    def reduced(self) -> bool:
        return self.image.size != self.full_size


def looks_like_data_uri(text: str) -> bool:
    return text[:5].lower() == "data:"


def decode_base64_payload(text: str, *, max_bytes: int) -> bytes:
    """Decode a ``data:`` URI or bare base64 string, checking the length before decoding.

    Raises:
        ImageInputError: malformed URI or base64, or a payload over ``max_bytes``.
    """
    payload = text
    if looks_like_data_uri(text):
        match = _DATA_URI.match(text)
        if match is None or not match.group("b64"):
            raise ImageInputError(
                "a data: URI image must be base64 encoded, like 'data:image/png;base64,iVBORw0...'"
            )
        payload = text[match.end() :]
    if payload and len(payload) * 3 // 4 <= max_bytes:
        # The common case, padded standard base64 with no whitespace: one validating pass of
        # pybase64's SIMD decoder (a 6 MB data URI: about 0.4 ms against 13 ms for the standard
        # library's, plus 5 ms of the checks below). Anything else it refuses (any character outside
        # the standard alphabet) takes the path below, which accepts the variants (whitespace, no
        # padding, URL-safe) or names the problem.
        with contextlib.suppress(ValueError):
            return pybase64.b64decode(payload, validate=True)
    try:  # whitespace removed: bytes.translate is several times faster than str.split and join
        data = payload.encode("ascii").translate(None, _ASCII_WHITESPACE)
    except UnicodeEncodeError:  # not base64 anyway, unless the only non-ASCII is whitespace
        data = "".join(payload.split()).encode("ascii", errors="replace")
    # 4 base64 characters carry 3 bytes: refuse before allocating the decoded buffer.
    if len(data) * 3 // 4 > max_bytes:
        raise ImageInputError(
            f"the base64 image is about {len(data) * 3 // 4} bytes; the limit is {max_bytes} bytes. "
            "Send a smaller image (downscale or re-encode as JPEG/WebP)."
        )
    body = data.rstrip(b"=")
    # The alphabet, then at most two '=' at the end; bytes.translate deletes the alphabet several
    # times faster than a regex walks it (a 6 MB data URI: 2 ms against 8-20 ms).
    if not body or len(data) - len(body) > 2 or body.translate(None, _B64_CHARS):
        raise ImageInputError(
            "the image is not valid base64 (expected a data: URI, bare base64, an image://<id> reference, "
            "or a file path)"
        )
    try:
        if b"-" in data or b"_" in data:
            return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
        return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageInputError(
            "the image is not valid base64; check that the string was not truncated"
        ) from exc


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    max_aspect: float = MAX_ASPECT,
    min_side: int | None = None,
    budget: DecodeBudget | None = None,
    on_header: Callable[[str, int, bool, bool], None] | None = None,
) -> DecodedImage:
    """Decode untrusted bytes into the server's standard form (8-bit sRGB ``RGB`` or ``RGBA``; first
    frame only; EXIF orientation, bit depth and ICC profile applied: see :mod:`.normalize`).

    ``on_header(format, orientation, keeps_original, staged)`` is called once the header passed its
    checks, before any pixel is decoded (the caller may start work that needs only those, meanwhile).

    Before any pixel is decoded, from the header: the format (magic bytes, then Pillow limited to
    :data:`ALLOWED_FORMATS`), the pixel count against ``max_pixels``, the aspect ratio against
    ``max_aspect``, the pixels left in the current tool call's budget
    (:func:`~multimodal_mcp.imaging.admission.call_pixel_budget`), and a JPEG's number of scans
    against :data:`MAX_JPEG_SCANS`. The decode then waits for room in ``budget`` (decoded bytes
    across concurrent decodes). Reading the data checks for cancellation of the calling AnyIO task
    every 64 KiB, so a cancelled call stops decoding.

    ``min_side``: the use needs no more than this many pixels on the short side; a JPEG whose own
    bytes can be stored (``keeps_original``: no profile to convert; an EXIF orientation is kept with
    them; or ``staged``: converted in the background) is then decoded at a reduced scale (1/2, 1/4
    or 1/8, Pillow's ``draft``) that keeps both sides at least ``min_side``, then converted and
    turned upright. The result's ``full_size`` keeps the declared size, upright.

    The EXIF orientation is read from the EXIF block only (:func:`read_orientation`), as viewers read
    it; a block that cannot be parsed leaves the picture as it is.

    Raises:
        ImageInputError: unknown or disallowed format, over a limit (named, with what to do),
            truncated or corrupt data, or busy beyond the budget's wait.
    """
    if not _has_allowed_magic(data):
        raise ImageInputError(
            f"the data is not an image in an accepted format; accepted: {', '.join(ALLOWED_FORMATS)} "
            "(checked by content, whatever the file name says)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(_CancellableReader(data), formats=list(ALLOWED_FORMATS))
    except Image.UnidentifiedImageError as exc:
        raise ImageInputError(
            f"the data is not an image in an accepted format; accepted: {', '.join(ALLOWED_FORMATS)}"
        ) from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageInputError(
            f"the image header declares over {Image.MAX_IMAGE_PIXELS} pixels; the limit is {max_pixels}. "
            "Downscale it first."
        ) from exc
    except Exception as exc:  # any decoder failure on untrusted bytes is the input's fault
        without = _without_png_profile(data)
        if without is None:
            raise ImageInputError("the image data is corrupt or truncated") from exc
        # Pillow refuses a PNG whose iCCP chunk it cannot read (over 1 MB decompressed, an unknown
        # compression): the profile is ignored, as an unreadable one is anywhere else.
        decoded = decode_image(
            without,
            max_pixels=max_pixels,
            max_aspect=max_aspect,
            min_side=min_side,
            budget=budget,
            on_header=on_header,
        )
        note = f"{IGNORED_PROFILE} (a PNG iCCP chunk that cannot be read); pixels taken as sRGB"
        return dataclasses.replace(decoded, notes=(*decoded.notes, note))

    with img:
        # A JPEG with a Multi-Picture Format index (a phone's HDR gain map or depth map after the
        # picture) opens as "MPO": its first image is a whole JPEG, the picture, and is read as one.
        fmt = "JPEG" if img.format == "MPO" else img.format or "unknown"
        _check_header(img, data, max_pixels=max_pixels, max_aspect=max_aspect)
        try:
            exif_orientation = read_orientation(img)
            # The orientation applied: 1 (as sent) for a value outside 1-8, as viewers do.
            orientation = (
                exif_orientation if exif_orientation is not None and 1 <= exif_orientation <= 8 else 1
            )
            full = img.size[::-1] if orientation in (5, 6, 7, 8) else img.size
            # Animated GIF/WebP/APNG: frame 0 only (counting the frames would decode them all).
            img.seek(0)
            keeps_original = _keeps_original(img, data, exif_orientation)
            staged = not keeps_original and _stages(img, fmt, exif_orientation)
            # Kept after all if the decoder ignores the profile (unreadable, or RGB on palette pixels).
            kept_unless_profile = staged and _keeps_original(img, data, exif_orientation, profile=False)
            if min_side and (keeps_original or staged) and fmt == "JPEG" and min(img.size) >= 2 * min_side:
                img.draft(None, (min_side, min_side))  # img.size is now the reduced size
        except Exception as exc:  # hostile headers
            raise ImageInputError("the image data is corrupt or truncated") from exc
        if on_header is not None:
            on_header(fmt, orientation, keeps_original, staged)
        calls = current_call_pixels()
        if calls is not None:
            calls.take(*img.size)
        budget = budget or DEFAULT_DECODE_BUDGET
        peak = img.width * img.height * _BYTES_PER_PIXEL_IN_FLIGHT
        budget.acquire(peak)
        kept = 0
        try:
            try:
                img.load()
                oriented = apply_orientation(img, orientation)
                image, notes = standardize_with_notes(oriented)
                if kept_unless_profile and notes and all(n.startswith(IGNORED_PROFILE) for n in notes):
                    keeps_original, staged = True, False  # the file's pixels as they are: kept
                if fmt == "PNG" and data[24:25] == b"\x10" and img.mode in ("LA", "RGB", "RGBA"):
                    notes = (TRUNCATED_16_BIT, *notes)
            except ImageInputError:
                raise
            # (A cancellation is a BaseException: it passes through.)
            except Exception as exc:  # truncated, lying or malformed data, hostile EXIF or profile
                raise ImageInputError("the image data is corrupt or truncated") from exc
            if calls is not None:
                # The image lives as long as the call and stays admitted until then: its pixels, or,
                # when the store will encode them again (a lossless encoder holds several copies), the
                # whole peak.
                kept = image.width * image.height * 4 if keeps_original or staged else peak
                kept = min(peak, kept)
                calls.hold(budget, kept)
        finally:
            budget.release(peak - kept)
    return DecodedImage(
        image=image,
        source_format=fmt,
        full_size=full,
        notes=notes,
        keeps_original=keeps_original,
        staged=staged,
        orientation=orientation,
    )


def _check_header(img: Image.Image, data: bytes, *, max_pixels: int, max_aspect: float) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise ImageInputError(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}. "
            "Downscale it first."
        )
    if max(width, height) > max_aspect * max(1, min(width, height)):
        raise ImageInputError(
            f"the image is {width}x{height}, an aspect ratio over this server's limit of "
            f"{max_aspect:g}:1; crop it, or pad its short side, to at most {max_aspect:g}:1 first"
        )
    if img.format in ("JPEG", "MPO"):
        scans = jpeg_scan_count(data)
        if scans > MAX_JPEG_SCANS:
            raise ImageInputError(
                f"the JPEG has {scans} scans; the limit is {MAX_JPEG_SCANS} (a standard progressive "
                "JPEG has about 10). Re-encode it, e.g. as a baseline JPEG or a PNG."
            )


def jpeg_scan_count(data: bytes) -> int:
    """The number of scans (SOS segments) of a JPEG, found by walking its marker segments: the
    lengths of header segments are skipped (a marker's bytes inside an ICC profile or EXIF block do
    not count), and entropy-coded data is skipped to the next marker (0xFF00 is a stuffed byte,
    0xFFD0-0xFFD7 are restart markers). Bytes between segments that are not a marker are skipped to
    the next one, as libjpeg does (it warns of "extraneous bytes" and decodes on), so junk cannot hide
    the scans after it. Stops at EOI or at the end of the data."""
    scans, i, end = 0, 2, len(data)
    while i + 1 < end:
        if data[i] != 0xFF:  # junk before a marker
            i = data.find(b"\xff", i)
            if i < 0:
                return scans
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x00:  # 0xFF00 between segments: junk too
            i += 2
            continue
        if marker == 0xD9:  # EOI
            return scans
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if i + 4 > end:
            return scans
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker != 0xDA:
            continue
        scans += 1
        # Entropy-coded data up to the next 0xFF that is neither a stuffed byte nor a restart marker
        # (a regex walks the megabytes of a photo's scan at C speed, not 0xFF by 0xFF in Python).
        found = _AFTER_SCAN.search(data, i)
        if found is None:
            return scans
        i = found.start()
    return scans


ORIENTATIONS = range(1, 9)
"""The EXIF orientation values (TIFF tag 0x0112); others are ignored, as viewers do."""
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""What turns a picture with EXIF orientation 2-8 upright (TIFF 6.0's Orientation tag)."""


def read_orientation(img: Image.Image) -> int | None:
    """The orientation tag of the image's own EXIF block (1 when it has none), as browsers and photo
    viewers read it; an orientation only in XMP is not one (Pillow's ``getexif`` would take it).
    None when the EXIF block cannot be read: the picture is then taken as it is."""
    raw = img.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(0x0112, 1)
    except Exception:  # hostile or malformed EXIF
        return None
    return value if isinstance(value, int) else None


def apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """``img`` turned and mirrored upright for EXIF ``orientation`` (``img`` itself for 1 or an
    unknown value). Only the pixels: unlike ``ImageOps.exif_transpose``, no EXIF block is rewritten,
    so an odd tag elsewhere in it (a maker's RATIONAL model name) cannot fail the read."""
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


class _CancellableReader(io.BytesIO):
    """The encoded bytes as a file whose reads check for cancellation of the calling AnyIO task."""

    def read(self, size: int | None = -1, /) -> bytes:
        _check_cancelled()
        return super().read(size)

    def readinto(self, buffer: Any, /) -> int:
        _check_cancelled()
        return super().readinto(buffer)


def _check_cancelled() -> None:
    # Outside an AnyIO worker thread nothing can cancel this decode.
    with contextlib.suppress(NoEventLoopError):
        from_thread.check_cancelled()


_KEPT_FORMATS = ("PNG", "JPEG", "MPO", "WEBP")

TRUNCATED_16_BIT = "16-bit samples reduced to 8 bits (each sample's high byte)"
"""The note of a 16-bit colour or grey-and-alpha PNG: Pillow reads it as 8 bits a sample, keeping the
high byte (within one level of the 255/65535 scaling a 16-bit grey PNG gets)."""


def _keeps_original(img: Image.Image, data: bytes, orientation: int | None, *, profile: bool = True) -> bool:
    """Conservative: True only where decoding the original bytes again (their EXIF orientation
    applied) yields exactly the decoded image, so nothing but a mode conversion separates them (see
    :attr:`DecodedImage.keeps_original`). ``profile`` False: as if it had no ICC profile."""
    if img.format not in _KEPT_FORMATS or img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        return False
    # An MPO's first image is kept alone (the stripper stops at its end): that is the frame decoded.
    if img.format != "MPO" and (getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) != 1):
        return False
    apng = getattr(img, "custom_mimetype", None) == "image/apng"
    if img.format == "PNG" and (data[24:25] > b"\x08" or apng):
        return False  # 16 bits per sample (IHDR's bit depth), or an APNG
    icc = img.info.get("icc_profile") if profile else None
    if icc and not (img.mode in ("RGB", "RGBA") and is_srgb_profile(icc)):
        return False  # converted to sRGB: the pixels differ from the file's (an sRGB profile: same)
    if orientation is None:  # a hostile EXIF block: the decoder handles it, the original is not kept
        return False
    # A JPEG keeps its orientation tag when stored (compact.strip_jpeg): a phone's portrait photo is
    # stored as sent, not decoded whole, turned and encoded again. Other formats store pixels upright.
    return img.format in ("JPEG", "MPO") or orientation not in ORIENTATIONS or orientation == 1


def _stages(img: Image.Image, fmt: str, orientation: int | None) -> bool:
    """Whether bytes that do not keep their original decode to the pixels used through a conversion
    alone (see :attr:`DecodedImage.staged`): any JPEG (one frame of 8-bit samples; an MPO's first
    picture too), a PNG or WebP of one frame without an EXIF rotation; never with hostile EXIF."""
    if orientation is None:
        return False
    if fmt == "JPEG":
        return True
    animated = getattr(img, "is_animated", False) or getattr(img, "n_frames", 1) != 1
    apng = getattr(img, "custom_mimetype", None) == "image/apng"
    return fmt in ("PNG", "WEBP") and not animated and not apng and orientation not in range(2, 9)


def _without_png_profile(data: bytes) -> bytes | None:
    """A PNG without its iCCP chunk (the other chunks as they are), or None when ``data`` is not a
    PNG whose chunks can be walked or has no iCCP chunk."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    out, i, found = [data[:8]], 8, False
    while i + 12 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        end = i + 12 + length
        if data[i + 4 : i + 8] == b"iCCP":
            found = True
        else:
            out.append(data[i:end])
        if data[i + 4 : i + 8] == b"IEND" or end > len(data):
            break
        i = end
    return b"".join(out) if found else None


def _has_allowed_magic(data: bytes) -> bool:
    return _MAGIC.match(data[:16]) is not None


def encode_png(img: Image.Image, text: Mapping[str, str] | None = None) -> bytes:
    """Encode a PNG with optional text chunks. Deterministic: same pixels and text, same bytes."""
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    buf = io.BytesIO()
    # Level 1: a little larger than the default 6 and several times faster, which matters for
    # 1024 px images on the hot path of every generation.
    img.save(buf, format="PNG", pnginfo=info, compress_level=1)
    return buf.getvalue()


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG (used to read back embedded generation parameters)."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
        img.load()
        return {str(k): v for k, v in img.info.items() if isinstance(v, str)}


def generation_text_chunks(meta: Mapping[str, Any]) -> dict[str, str]:
    """PNG text chunks for a generated image: an A1111-style ``parameters`` line and full JSON."""
    params = meta.get("parameters") or {}
    lines = [str(meta.get("prompt") or "")]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    fields = {
        "Steps": params.get("steps"),
        "Sampler": params.get("scheduler"),
        "CFG scale": params.get("guidance_scale"),
        "Seed": meta.get("seed"),
        "Size": f"{params.get('width')}x{params.get('height')}" if params.get("width") else None,
        "Model": meta.get("model"),
    }
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None))
    record = {
        k: meta[k]
        for k in ("prompt", "negative_prompt", "seed", "model", "parameters", "parents")
        if k in meta
    }
    return {
        "parameters": "\n".join(lines),
        "multimodal-mcp": json.dumps(record, sort_keys=True, separators=(",", ":")),
    }


@dataclass(frozen=True)
class Preview:
    data: bytes
    mime_type: str
    width: int
    height: int


_MIME = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}


def encode_preview(img: Image.Image, *, max_side: int, max_bytes: int, fmt: str = "jpeg") -> Preview:
    """A downscaled, encoded preview no larger than ``max_bytes``.

    Lowers quality, then size, until it fits; PNG previews fall back to JPEG when they cannot fit.
    """
    rgb = picture(img)
    side = max_side
    while True:
        scaled = rgb.copy()
        if max(scaled.size) > side:
            scaled.thumbnail((side, side), Image.Resampling.LANCZOS)
        if fmt == "png":
            data = _save(scaled, "PNG")
            if len(data) <= max_bytes:
                return Preview(data, _MIME["png"], *scaled.size)
            fmt = "jpeg"
        for quality in (85, 70, 55, 40):
            data = _save(scaled, fmt.upper(), quality=quality)
            if len(data) <= max_bytes:
                return Preview(data, _MIME[fmt], *scaled.size)
        if side <= 64:
            return Preview(data, _MIME[fmt], *scaled.size)
        side = max(64, side * 2 // 3)


def _save(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()
