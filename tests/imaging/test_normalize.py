"""The one normalization path: bit depth, colour, transparency and masks, by use.

Inputs are built in code; each example from the issue that reported it is a test with the right value.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib

import anyio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageDraw

from multimodal_mcp.errors import ImageInputError
from multimodal_mcp.imaging.admission import DecodeBudget, call_pixel_budget
from multimodal_mcp.imaging.codec import MAX_JPEG_SCANS, TRUNCATED_16_BIT, decode_image, jpeg_scan_count
from multimodal_mcp.imaging.normalize import (
    MaskError,
    control_map,
    is_srgb_profile,
    picture,
    read_mask,
    standardize,
    standardize_with_notes,
    to_8bit,
)

from helpers import encoded, photo, swapped_profile, transparent_disc

# --- bit depth ---------------------------------------------------------------------------------------


def test_a_16_bit_grey_ramp_keeps_its_levels() -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    data = encoded(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    decoded = decode_image(data, max_pixels=10_000)
    grey = np.asarray(decoded.image)[..., 0]
    assert len(np.unique(grey)) == 256  # was 2 levels, 99.6% pure white
    assert float((grey == 255).mean()) == pytest.approx(1 / 256)
    assert grey[0, 0] == 0 and grey[0, 128] == 128 and grey[0, -1] == 255
    assert "16-bit samples scaled to 8 bits" in decoded.notes
    # Used as a depth map it is the same ramp, not white.
    depth = np.asarray(control_map(decoded.image))[..., 0]
    assert np.array_equal(depth, grey)


def _png_16(samples: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes 16 bits only for grey): rows of big-endian samples."""
    height, width = samples.shape[:2]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("colour_type", "bands"), [(2, 3), (6, 4), (4, 2)])
def test_a_16_bit_colour_png_is_read_by_its_high_bytes_and_says_so(colour_type: int, bands: int) -> None:
    # 511 scales to 2 (511 * 255 / 65535 = 1.99) but Pillow keeps its high byte, 1: the note says so.
    samples = np.full((4, 4, bands), 511, dtype=np.uint16)
    samples[..., -1] = 65535 if bands in (2, 4) else 511  # alpha, when there is one: opaque
    decoded = decode_image(_png_16(samples, colour_type), max_pixels=10_000)
    assert decoded.notes[0] == TRUNCATED_16_BIT
    assert decoded.image.getpixel((0, 0))[:3] == (1, 1, 1)
    assert decoded.staged  # stored as sent, then converted: to the same pixels (test_staging)
    eight_bit = encoded(Image.new("RGB", (4, 4), (1, 1, 1)), "PNG")
    assert decode_image(eight_bit, max_pixels=10_000).notes == ()


def test_integer_and_float_samples_are_scaled_by_their_depth() -> None:
    sixteen = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32), mode="I")
    assert np.asarray(to_8bit(sixteen)).tolist() == [[0, 128, 255]]
    thirty_two = Image.fromarray(np.array([[0, 2**30, 2**31 - 1, -5]], dtype=np.int32), mode="I")
    assert np.asarray(to_8bit(thirty_two)).tolist() == [[0, 128, 255, 0]]
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0, -1.0]], dtype=np.float32), mode="F")
    assert np.asarray(to_8bit(floats)).tolist() == [[0, 128, 255, 255, 0]]


# --- transparency --------------------------------------------------------------------------------------


def test_the_colour_hidden_under_transparent_pixels_never_matters() -> None:
    on_black, on_red = transparent_disc((0, 0, 0)), transparent_disc((255, 0, 0))
    assert np.array_equal(np.asarray(picture(on_black)), np.asarray(picture(on_red)))
    corner = picture(on_black).getpixel((0, 0))
    assert corner == (255, 255, 255)  # a picture's transparency is white for every model
    assert control_map(on_red).getpixel((0, 0)) == (0, 0, 0)  # a map's is black
    assert picture(on_black).getpixel((32, 32)) == (20, 20, 20)


def test_partial_alpha_is_blended_not_thresholded() -> None:
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 128))
    assert picture(img).getpixel((0, 0)) == (127, 127, 127)


def test_a_gif_s_transparent_palette_colour_does_not_show() -> None:
    frame = Image.new("P", (32, 32), 1)
    frame.putpalette([0, 255, 0, 200, 30, 30] + [0] * (256 * 3 - 6))
    ImageDraw.Draw(frame).rectangle((8, 8, 23, 23), fill=0)  # index 0: green, declared transparent
    data = encoded(frame, "GIF", transparency=0)
    decoded = decode_image(data, max_pixels=10_000)
    assert decoded.image.mode == "RGBA"
    assert picture(decoded.image).getpixel((16, 16)) == (255, 255, 255)
    assert picture(decoded.image).getpixel((2, 2)) == (200, 30, 30)


def test_a_png_transparent_colour_chunk_is_alpha() -> None:
    img = Image.new("RGB", (8, 8), (10, 200, 10))
    img.putpixel((0, 0), (1, 2, 3))
    decoded = decode_image(encoded(img, "PNG", transparency=(1, 2, 3)), max_pixels=10_000)
    assert picture(decoded.image).getpixel((0, 0)) == (255, 255, 255)
    assert picture(decoded.image).getpixel((1, 1)) == (10, 200, 10)


# --- masks ---------------------------------------------------------------------------------------------


def test_white_strokes_on_a_transparent_layer_repaint_only_the_strokes() -> None:
    layer = Image.new("RGBA", (100, 100), (255, 255, 255, 0))  # hidden colour white
    ImageDraw.Draw(layer).rectangle((0, 0, 99, 9), fill=(255, 255, 255, 255))  # 10% of the picture
    reading = read_mask(layer)
    assert reading.convention == "opaque_strokes_repaint"
    assert reading.repainted_fraction == pytest.approx(0.10)  # was 100%
    assert reading.mask.getpixel((50, 5)) == 255 and reading.mask.getpixel((50, 50)) == 0


def test_openai_s_erased_area_convention_is_read_not_refused() -> None:
    picture_with_hole = photo("astronaut", 100).convert("RGBA")
    ImageDraw.Draw(picture_with_hole).rectangle((20, 20, 39, 39), fill=(0, 0, 0, 0))
    reading = read_mask(picture_with_hole)
    assert reading.convention == "transparent_repaints"
    assert reading.repainted_fraction == pytest.approx(0.04)
    assert reading.mask.getpixel((30, 30)) == 255 and reading.mask.getpixel((80, 80)) == 0
    assert "OpenAI" in reading.describe()


def test_a_black_and_white_mask_is_read_as_before_and_a_colour_picture_is_refused() -> None:
    mask = Image.new("L", (50, 50), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 24, 49), fill=255)
    reading = read_mask(mask)
    assert reading.convention == "white_repaints" and reading.repainted_fraction == pytest.approx(0.5)
    with pytest.raises(MaskError, match="transparency"):
        read_mask(photo("astronaut", 50))


# --- colour --------------------------------------------------------------------------------------------


def test_an_embedded_icc_profile_is_converted_to_srgb() -> None:
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    decoded = decode_image(encoded(red, "PNG", icc_profile=swapped_profile()), max_pixels=10_000)
    r, g, b = decoded.image.getpixel((0, 0))
    assert b > 240 and r < 15 and g < 15  # the profile says this red is blue
    assert "icc_profile" not in decoded.image.info
    assert any("ICC profile" in note for note in decoded.notes)


def test_a_huge_profile_is_not_kept_with_the_pixels() -> None:
    img = Image.new("RGB", (16, 16), (90, 120, 200))
    data = encoded(img, "JPEG", icc_profile=swapped_profile(padding=4 * 2**20))
    assert len(data) > 4 * 2**20  # JPEG carries it in 65 APP2 segments
    decoded = decode_image(data, max_pixels=10_000)
    assert decoded.image.getpixel((8, 8))[2] < 120  # converted: blue and red exchanged
    assert decoded.image.info == {}
    assert len(encoded(decoded.image, "PNG")) < 2000


def test_an_unreadable_profile_is_ignored_and_said() -> None:
    img = Image.new("RGB", (8, 8), (90, 120, 200))
    image, notes = standardize_with_notes(_with_info(img, icc_profile=b"not a profile" * 20))
    assert image.getpixel((0, 0)) == (90, 120, 200) and "unreadable" in notes[0]


def _with_info(img: Image.Image, **info: object) -> Image.Image:
    img.info.update(info)
    return img


def test_exif_orientation_is_still_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encoded(img, "JPEG", exif=exif), max_pixels=10_000)
    assert decoded.image.size == (20, 40) and decoded.full_size == (20, 40)


# --- the property: every mode, every use ---------------------------------------------------------------

MODES = ("1", "L", "LA", "P", "I;16", "I", "F", "RGB", "RGBA", "CMYK")


def _image_of(mode: str, value: int, alpha: int) -> Image.Image:
    """A 4x4 image of ``mode`` whose pixels are grey ``value`` (0..255) with ``alpha`` where the mode
    has transparency; for P, palette index 0 is that grey and is declared transparent when alpha < 255."""
    if mode == "I;16":
        return Image.fromarray(np.full((4, 4), value * 257, dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(np.full((4, 4), value * 257, dtype=np.int32))
    if mode == "F":
        return Image.fromarray(np.full((4, 4), value / 255, dtype=np.float32))
    if mode == "P":
        img = Image.new("P", (4, 4), 0)
        img.putpalette([value] * 3 + [0] * 765)
        if alpha < 255:
            img.info["transparency"] = 0
        return img
    if mode == "CMYK":
        return Image.new("CMYK", (4, 4), (0, 0, 0, 255 - value))
    if mode == "1":
        return Image.new("1", (4, 4), 1 if value >= 128 else 0)
    base = Image.new("RGBA", (4, 4), (value, value, value, alpha))
    return base.convert(mode)


@settings(max_examples=120, deadline=None)
@given(mode=st.sampled_from(MODES), value=st.integers(0, 255), alpha=st.sampled_from([0, 255]))
def test_every_mode_follows_the_documented_policy_for_every_use(mode: str, value: int, alpha: int) -> None:
    img = _image_of(mode, value, alpha)
    grey = (255 if value >= 128 else 0) if mode == "1" else value
    transparent = alpha == 0 and mode in ("LA", "P", "RGBA")
    standard = standardize(img)
    assert standard.mode == ("RGBA" if mode in ("LA", "RGBA") or (mode == "P" and transparent) else "RGB")
    assert standard.info == {}
    if not transparent:
        assert all(abs(c - grey) <= 1 for c in standard.getpixel((0, 0))[:3])
    as_picture, as_map = picture(img).getpixel((1, 1)), control_map(img).getpixel((1, 1))
    assert picture(img).mode == control_map(img).mode == "RGB"
    if transparent:
        assert as_picture == (255, 255, 255) and as_map == (0, 0, 0)
    else:
        assert as_picture == as_map and all(abs(c - grey) <= 1 for c in as_picture)
    if transparent:
        # Alpha is the mask: a fully transparent light layer has no strokes, so all of it is the
        # erased area to repaint; the colour under it is not read.
        assert read_mask(img).repainted_fraction == 1.0
    else:
        reading = read_mask(img)
        assert reading.convention == "white_repaints"
        assert reading.repainted_fraction == (1.0 if grey >= 128 else 0.0)


# --- cost bounds ---------------------------------------------------------------------------------------


def test_a_thin_strip_is_refused_by_its_aspect_ratio_before_decoding() -> None:
    data = encoded(Image.new("L", (100_000, 1), 128), "PNG")
    assert len(data) < 1000
    with pytest.raises(ImageInputError, match=r"100000x1.*32:1"):
        decode_image(data, max_pixels=40_000_000)


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding() -> None:
    base = encoded(photo("astronaut", 32), "JPEG", progressive=True)
    hostile = base[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * (MAX_JPEG_SCANS + 1) + b"\xff\xd9"
    with pytest.raises(ImageInputError, match=f"the limit is {MAX_JPEG_SCANS}"):
        decode_image(hostile, max_pixels=10_000)
    decode_image(base, max_pixels=10_000)  # a standard progressive JPEG is fine


@pytest.mark.parametrize(
    "junk",
    [b"\x00", b"junk before the next marker", b"\xff\x00\x12"],
    ids=["a zero byte", "text", "a stuffed 0xff00 and a byte"],
)
def test_junk_between_segments_does_not_hide_scans_from_the_limit(junk: bytes) -> None:
    # libjpeg skips bytes that are not a marker ("extraneous bytes") and decodes on: so does the count.
    base = encoded(photo("astronaut", 32), "JPEG", progressive=True)
    first_scan = base.index(b"\xff\xda")
    scans = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" * (MAX_JPEG_SCANS + 1)
    hostile = base[:first_scan] + junk + base[first_scan:-2] + junk + scans + b"\xff\xd9"
    assert jpeg_scan_count(hostile) > MAX_JPEG_SCANS
    with pytest.raises(ImageInputError, match=f"the limit is {MAX_JPEG_SCANS}"):
        decode_image(hostile, max_pixels=10_000)
    mpo = io.BytesIO()
    second = [photo("coffee", 16)]
    photo("astronaut", 32).save(mpo, "MPO", save_all=True, append_images=second, progressive=True)
    data = mpo.getvalue()
    at = data.index(b"\xff\xda")
    hostile_mpo = data[:at] + junk + data[at:]
    end = hostile_mpo.index(b"\xff\xd9")  # the first picture's end: its scans are what is decoded
    hostile_mpo = hostile_mpo[:end] + scans + hostile_mpo[end:]
    with pytest.raises(ImageInputError, match=f"the limit is {MAX_JPEG_SCANS}"):
        decode_image(hostile_mpo, max_pixels=10_000)


def test_a_large_jpeg_decodes_at_reduced_scale_when_the_use_needs_fewer_pixels() -> None:
    data = encoded(photo("astronaut", 512).resize((2048, 1536)), "JPEG", quality=90)
    decoded = decode_image(data, max_pixels=40_000_000, min_side=224)
    assert decoded.full_size == (2048, 1536)
    assert decoded.image.size == (512, 384) and decoded.reduced
    assert decode_image(data, max_pixels=40_000_000).image.size == (2048, 1536)


def test_the_images_of_one_call_share_a_pixel_budget() -> None:
    data = encoded(Image.new("RGB", (100, 100)), "PNG")
    with call_pixel_budget(25_000) as budget:
        decode_image(data, max_pixels=10**6)
        decode_image(data, max_pixels=10**6)
        with pytest.raises(ImageInputError, match="exceed 25000 pixels"):
            decode_image(data, max_pixels=10**6)
    assert budget.used == 20_000
    decode_image(data, max_pixels=10**6)  # outside a call: no call budget


def test_concurrent_decodes_wait_for_room_in_the_memory_budget() -> None:
    budget = DecodeBudget(100)
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with budget.admit(80):
            order.append("first in")
            entered.set()
            release.wait(5)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait(5)

    def second() -> None:
        with budget.admit(80):
            order.append("second in")

    waiter = threading.Thread(target=second)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and budget.in_use == 80  # the second waits while the first holds
    release.set()
    thread.join(5)
    waiter.join(5)
    assert order == ["first in", "first out", "second in"] and budget.in_use == 0
    with budget.admit(500):  # larger than the budget: admitted alone once nothing else holds it
        pass


def test_a_decode_waits_no_longer_than_its_budget_allows() -> None:
    budget = DecodeBudget(100, wait_seconds=0.05)
    with budget.admit(90), pytest.raises(ImageInputError, match="busy decoding"):
        decode_image(encoded(Image.new("RGB", (8, 8)), "PNG"), max_pixels=100, budget=budget)


def test_cancelling_the_call_stops_its_decode() -> None:
    data = encoded(photo("astronaut", 64), "PNG")
    started, go = threading.Event(), threading.Event()
    outcome: list[str] = []

    def work() -> None:
        started.set()
        go.wait(5)
        try:
            decode_image(data, max_pixels=10**6)
            outcome.append("decoded")
        except BaseException as exc:
            outcome.append(type(exc).__name__)
            raise

    async def main() -> bool:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def cancel() -> None:
                    await anyio.to_thread.run_sync(started.wait)
                    scope.cancel()
                    go.set()

                tg.start_soon(cancel)
                await anyio.to_thread.run_sync(work)
        return scope.cancelled_caught

    assert anyio.run(main) is True
    assert outcome == ["CancelledError"]


def test_an_srgb_profile_needs_no_conversion_and_the_original_is_kept() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    picture_ = photo("astronaut", 64)
    with_profile = encoded(picture_, "JPEG", quality=90, icc_profile=srgb)
    without = encoded(picture_, "JPEG", quality=90)
    decoded = decode_image(with_profile, max_pixels=10_000)
    assert decoded.keeps_original and decoded.notes == ()  # its own bytes can be stored
    assert decoded.image.tobytes() == decode_image(without, max_pixels=10_000).image.tobytes()
    assert is_srgb_profile(srgb) and not is_srgb_profile(swapped_profile())
    swapped = decode_image(encoded(picture_, "JPEG", icc_profile=swapped_profile()), max_pixels=10_000)
    assert not swapped.keeps_original


def test_scans_are_counted_by_the_jpeg_structure_not_by_bytes_in_its_metadata() -> None:
    progressive = encoded(photo("astronaut", 64), "JPEG", progressive=True)
    assert 2 <= jpeg_scan_count(progressive) <= 20
    assert jpeg_scan_count(encoded(photo("astronaut", 64), "JPEG")) == 1  # baseline
    # A profile full of 0xFFDA bytes is not scans: the file decodes.
    noisy_profile = swapped_profile(padding=0) + b"\xff\xda" * 50_000
    noisy_profile = len(noisy_profile).to_bytes(4, "big") + noisy_profile[4:]
    data = encoded(photo("astronaut", 16), "JPEG", icc_profile=noisy_profile)
    assert data.count(b"\xff\xda") > MAX_JPEG_SCANS and jpeg_scan_count(data) == 1
    decode_image(data, max_pixels=10_000)
