"""Photos whose colours must be converted (an ICC profile other than sRGB, CMYK) are stored at once as
their JPEG with the profile, and converted in the background (imaging.staging): readable under the
same id with the same pixels at every moment, by every process, and converted after a kill."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from multimodal_mcp.config import Limits
from multimodal_mcp.imaging.codec import decode_image
from multimodal_mcp.imaging.inputs import ImageResolver
from multimodal_mcp.imaging.staging import Staging
from multimodal_mcp.imaging.store import ImageStore
from multimodal_mcp.principals import acting_as

from helpers import photo, swapped_profile

MAX_PIXELS = 10**8


def phone_photo(kind: str = "profile", side: int = 256) -> bytes:
    """A JPEG as phones and print workflows send them: a colour profile to convert (or CMYK), an
    EXIF block with a portrait orientation, a maker and GPS, and a comment."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "PhoneMaker"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)  # GPS latitude
    img = photo("astronaut", side).resize((side, side * 3 // 4))
    options: dict[str, object] = {"exif": exif.tobytes(), "comment": b"private words", "quality": 92}
    if kind == "cmyk":
        img = img.convert("CMYK")
    else:
        options["icc_profile"] = swapped_profile()
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def uploaded(store: ImageStore, raw: bytes, min_side: int | None = 32):  # type: ignore[no-untyped-def]
    resolver = ImageResolver(store, (), Limits())
    resolved = resolver.resolve(base64.b64encode(raw).decode(), min_side=min_side)
    assert resolved.pending is not None
    return resolved, store.commit(resolved.pending)


@pytest.fixture
def unconverted(monkeypatch: pytest.MonkeyPatch) -> None:
    """No background conversion starts: a staged image stays staged until something settles it."""
    monkeypatch.setattr(Staging, "schedule", lambda self, image_id: None)


@pytest.mark.parametrize("kind", ["profile", "cmyk"])
def test_a_photo_to_convert_is_stored_at_once_as_its_jpeg_with_only_its_profile_and_orientation(
    tmp_path: Path, kind: str, unconverted: None
) -> None:
    raw = phone_photo(kind)
    store = ImageStore(tmp_path, fsync=False)
    resolved, record = uploaded(store, raw)
    whole = decode_image(raw, max_pixels=MAX_PIXELS).image  # the pixels used: converted, upright
    assert record.staged and record.format == "jpeg"
    assert resolved.image.size == (whole.width // 4, whole.height // 4)  # decoded at reduced scale
    assert (record.width, record.height) == whole.size == (192, 256)
    staged = (tmp_path / record.id[:2] / f"{record.id}.jpg").read_bytes()
    assert record.id == hashlib.sha256(staged).hexdigest()[:16] == record.sha256[:16]
    for private in (b"PhoneMaker", b"private words"):
        assert private in raw and private not in staged
    assert (b"ICC_PROFILE\x00" in staged) == (kind == "profile")
    with Image.open(io.BytesIO(staged)) as img:
        assert dict(img.getexif()) == {0x0112: 6}  # the orientation alone: no GPS IFD, no maker
    # Read by id while staged: the same pixels as the upload's, converted and upright.
    store._cache.forget(record.id)
    assert np.array_equal(np.asarray(store.open(record.id)), np.asarray(whole))


@pytest.mark.parametrize("kind", ["profile", "cmyk"])
def test_the_conversion_keeps_the_id_and_the_pixels_and_drops_the_profile(tmp_path: Path, kind: str) -> None:
    raw = phone_photo(kind)
    store = ImageStore(tmp_path, fsync=False)
    _, record = uploaded(store, raw)
    assert store.drain(timeout=60)
    converted = store.record(record.id)
    assert not converted.staged and converted.format == "webp"
    data, mime = store.read_bytes(record.id)
    assert mime == "image/webp" and converted.sha256 == hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as img:
        assert "icc_profile" not in img.info and "exif" not in img.info
        pixels = np.asarray(img.convert("RGB"))
    assert np.array_equal(pixels, np.asarray(decode_image(raw, max_pixels=MAX_PIXELS).image))
    files = sorted(p.name for p in (tmp_path / record.id[:2]).iterdir())
    assert files == [f"{record.id}.json", f"{record.id}.webp"]  # the staged JPEG is gone
    assert store.total_bytes == len(data) + len(converted.dump())
    assert store.index.pending() == []


def test_what_a_client_is_sent_of_a_staged_image_is_converted_first(
    tmp_path: Path, unconverted: None
) -> None:
    store = ImageStore(tmp_path, fsync=False)
    _, record = uploaded(store, phone_photo())
    assert store.record(record.id).staged
    path = store.path(record.id)  # settles it: a client never gets the profile or a file about to go
    assert path.suffix == ".webp" and path.is_file()
    data, mime = store.read_bytes(record.id)
    assert mime == "image/webp" and store.file_size(record.id) == len(data) == path.stat().st_size
    assert not store.record(record.id).staged


def test_the_same_photo_sent_again_while_staged_is_read_back_not_stored_twice(
    tmp_path: Path, unconverted: None
) -> None:
    raw = phone_photo()
    store = ImageStore(tmp_path, fsync=False)
    first, record = uploaded(store, raw)
    again, same = uploaded(store, raw)
    assert same.id == record.id and same.staged
    assert np.array_equal(np.asarray(again.image), np.asarray(first.image))
    whole, _ = uploaded(store, raw, min_side=None)
    assert np.array_equal(np.asarray(whole.image), np.asarray(decode_image(raw, max_pixels=MAX_PIXELS).image))


def test_an_owner_added_while_staged_is_kept_by_the_conversion(tmp_path: Path, unconverted: None) -> None:
    raw = phone_photo()
    store = ImageStore(tmp_path, fsync=False)
    with acting_as("user:alice"):
        _, record = uploaded(store, raw)
    with acting_as("user:bob"):
        uploaded(store, raw)
    store.staging.convert(record.id)
    with acting_as("user:bob"):
        converted = store.record(record.id)
    assert converted.format == "webp" and converted.owners == ["user:alice", "user:bob"]


def test_a_staged_image_removed_before_its_conversion_leaves_nothing(
    tmp_path: Path, unconverted: None
) -> None:
    store = ImageStore(tmp_path, fsync=False)
    _, record = uploaded(store, phone_photo())
    store._remove(record.id)  # as retention removes it
    store.staging.convert(record.id)
    assert not store.exists(record.id)
    assert not (tmp_path / record.id[:2]).exists() or not any((tmp_path / record.id[:2]).iterdir())


KILLED = """
import base64, os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from multimodal_mcp.imaging.staging import Staging
from multimodal_mcp.imaging.store import ImageStore
from test_staging import uploaded
Staging.schedule = lambda self, image_id: os.kill(os.getpid(), signal.SIGKILL)  # killed before converting
uploaded(ImageStore(Path(sys.argv[1])), base64.b64decode(sys.stdin.read()))
"""


def test_a_server_killed_before_converting_leaves_the_conversion_to_the_next_opening(tmp_path: Path) -> None:
    raw = phone_photo()
    here = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", KILLED, str(tmp_path), here],
        input=base64.b64encode(raw).decode(),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([here, str(Path(here).parent)])},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    staged = [p for p in tmp_path.rglob("*.jpg")]
    assert len(staged) == 1
    image_id = staged[0].stem
    reopened = ImageStore(tmp_path, fsync=False)  # settles the killed writer's pending staged image
    assert reopened.drain(timeout=60)
    record = reopened.record(image_id)
    assert record.format == "webp" and not record.staged and not staged[0].exists()
    assert np.array_equal(
        np.asarray(reopened.open(image_id)), np.asarray(decode_image(raw, max_pixels=MAX_PIXELS).image)
    )
    assert reopened.index.pending() == []


def test_a_staged_image_on_an_object_store_is_read_by_a_second_server_and_converted_when_sent(
    unconverted: None,
) -> None:
    pytest.importorskip("obstore")
    from obstore.store import MemoryStore

    from multimodal_mcp.imaging.object_store import ObjectStoreBackend

    bucket = MemoryStore()
    first = ImageStore(backend=ObjectStoreBackend(bucket, location="memory"))
    raw = phone_photo()
    _, record = uploaded(first, raw)
    second = ImageStore(backend=ObjectStoreBackend(bucket, location="memory"))
    assert second.record(record.id).staged
    whole = np.asarray(decode_image(raw, max_pixels=MAX_PIXELS).image)
    assert np.array_equal(np.asarray(second.open(record.id)), whole)
    _, mime = second.read_bytes(record.id)
    assert mime == "image/webp" and first.record(record.id).format == "webp"
    first._cache.forget(record.id)
    assert np.array_equal(np.asarray(first.open(record.id)), whole)


def screenshot(kind: str) -> bytes:
    """A PNG or WebP as Macs and editors write them: a colour profile to convert (or 16 bits per
    sample), with a text chunk or an XMP block."""
    img = photo("coffee", 96)
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "private editor")
    if kind == "png, profile":
        img.save(buf, "PNG", icc_profile=swapped_profile(), pnginfo=info)
    elif kind == "png, 16 bits":
        grey = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        Image.fromarray(grey).save(buf, "PNG", pnginfo=info)  # mode I;16
    else:
        img.save(buf, "WEBP", quality=80, icc_profile=swapped_profile(), xmp=b"<x>private editor</x>")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["png, profile", "png, 16 bits", "webp, profile"])
def test_a_png_or_webp_to_convert_is_staged_too_and_converted_to_the_same_pixels(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = screenshot(kind)
    expected = np.asarray(decode_image(raw, max_pixels=MAX_PIXELS).image)
    store = ImageStore(tmp_path, fsync=False)
    monkeypatch.setattr(Staging, "schedule", lambda self, image_id: None)
    _, record = uploaded(store, raw)
    fmt = "webp" if kind.startswith("webp") else "png"
    assert record.staged and record.format == fmt
    staged = (tmp_path / record.id[:2] / f"{record.id}.{fmt}").read_bytes()
    assert b"private editor" in raw and b"private editor" not in staged
    assert (b"iCCP" in staged or b"ICCP" in staged) == kind.endswith("profile")
    store._cache.forget(record.id)
    assert np.array_equal(np.asarray(store.open(record.id)), expected)
    store.staging.convert(record.id)
    converted = store.record(record.id)
    assert not converted.staged and converted.format == "webp"
    data, _ = store.read_bytes(record.id)
    with Image.open(io.BytesIO(data)) as img:
        assert "icc_profile" not in img.info
        assert np.array_equal(np.asarray(img.convert(converted.mode or img.mode)), expected)


def test_conversions_wait_while_a_call_runs_its_model_but_not_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_mcp.imaging import staging

    store = ImageStore(tmp_path, fsync=False)
    with store.staging.deferring():  # as a read-only call's model work holds it (tools.common)
        _, record = uploaded(store, phone_photo())
        assert not store.drain(timeout=0.5) and store.record(record.id).staged  # not started
    assert store.drain(timeout=60) and not store.record(record.id).staged
    monkeypatch.setattr(staging, "DEFER_SECONDS", 0.2)
    with store.staging.deferring():  # a call running long: the conversion starts anyway
        _, other = uploaded(store, phone_photo("cmyk"))
        assert store.drain(timeout=60) and not store.record(other.id).staged


def test_a_conversion_waits_for_the_call_to_answer_after_its_model_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_mcp.imaging import staging

    monkeypatch.setattr(staging, "SETTLE_SECONDS", 0.5)
    started: list[float] = []
    convert = Staging.convert
    monkeypatch.setattr(
        Staging, "convert", lambda self, i: (started.append(time.monotonic()), convert(self, i))
    )
    store = ImageStore(tmp_path, fsync=False)
    with store.staging.deferring():
        _, record = uploaded(store, phone_photo())
    model_work_ended = time.monotonic()
    assert store.drain(timeout=60) and not store.record(record.id).staged
    assert started[0] - model_work_ended >= 0.5 - 0.01  # (monotonic clocks may differ by a tick)


def test_a_conversion_that_grows_the_store_past_max_bytes_makes_retention_remove_old_images(
    tmp_path: Path,
) -> None:
    from multimodal_mcp.config import StoreSettings

    photos = [phone_photo(side=256 + 16 * n) for n in range(3)]
    probe = ImageStore(tmp_path / "probe", fsync=False)
    with probe.staging.deferring():  # measured staged, then converted
        for raw in photos:
            uploaded(probe, raw)
        staged = probe.total_bytes
    assert probe.drain(timeout=60)
    converted = probe.total_bytes
    limit = (staged + converted) // 2
    assert converted > limit  # converted, the three images do not fit
    store = ImageStore(
        tmp_path / "store", fsync=False, retention=StoreSettings(max_bytes=limit, max_age_days=0)
    )
    for raw in photos:
        uploaded(store, raw)
    assert store.drain(timeout=60)
    assert store.total_bytes <= limit  # the oldest went once the conversions grew the store


def test_a_staged_image_found_by_an_index_rebuild_stays_pending_until_converted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_mcp.imaging.store_index import INDEX_NAME

    monkeypatch.setattr(Staging, "schedule", lambda self, image_id: None)  # nothing converts yet
    store = ImageStore(tmp_path, fsync=False)
    _, record = uploaded(store, phone_photo())
    del store
    for index_file in tmp_path.glob(f"{INDEX_NAME}*"):
        index_file.unlink()  # the index lost: the next opening rebuilds it from the files
    rebuilt = ImageStore(tmp_path, fsync=False)
    assert [row[0] for row in rebuilt.index.pending()] == [record.id]  # a kill now leaves it pending
    del rebuilt
    monkeypatch.undo()
    reopened = ImageStore(tmp_path, fsync=False)  # settles the pending row: converts it
    assert reopened.drain(timeout=60) and not reopened.record(record.id).staged


def test_sending_a_staged_image_does_not_wait_for_the_background_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_mcp.imaging import staging

    monkeypatch.setattr(staging, "DEFER_SECONDS", 600.0)
    store = ImageStore(tmp_path, fsync=False)
    with store.staging.deferring():  # the background conversions cannot start
        _, first = uploaded(store, phone_photo())
        _, second = uploaded(store, phone_photo("cmyk"))  # queued behind the first
        for record in (second, first):
            _, mime = store.read_bytes(record.id)  # converted here and now, not after the queue
            assert mime == "image/webp" and not store.record(record.id).staged
    assert store.drain(timeout=60)


@pytest.mark.parametrize("kind", ["palette png, rgb profile", "jpeg, unreadable profile"])
def test_a_profile_the_decoder_ignores_does_not_stage_the_file_it_keeps_it(tmp_path: Path, kind: str) -> None:
    img = photo("coffee", 64)
    buf = io.BytesIO()
    if kind.startswith("palette"):
        img.convert("P").save(buf, "PNG", icc_profile=swapped_profile())  # RGB profile, palette pixels
    else:
        img.save(buf, "JPEG", icc_profile=swapped_profile()[:200])  # truncated: unreadable
    raw = buf.getvalue()
    decoded = decode_image(raw, max_pixels=MAX_PIXELS)
    assert decoded.keeps_original and not decoded.staged
    assert any(note.startswith("ignored the embedded ICC profile") for note in decoded.notes)
    store = ImageStore(tmp_path, fsync=False)
    _, record = uploaded(store, raw)
    assert not record.staged and record.format == ("png" if kind.startswith("palette") else "jpeg")
    data, _ = store.read_bytes(record.id)
    assert b"iCCP" not in data and b"ICC_PROFILE" not in data and len(data) <= len(raw)
    store._cache.forget(record.id)
    assert np.array_equal(np.asarray(store.open(record.id)), np.asarray(decoded.image))


def test_a_png_profile_pillow_cannot_read_is_ignored_not_the_whole_image_refused(tmp_path: Path) -> None:
    img = photo("coffee", 48)
    plain, big = io.BytesIO(), io.BytesIO()
    img.save(plain, "PNG")
    img.save(big, "PNG", icc_profile=swapped_profile(padding=2_000_000))  # over 1 MB decompressed
    decoded = decode_image(big.getvalue(), max_pixels=MAX_PIXELS)
    assert any(note.startswith("ignored the embedded ICC profile") for note in decoded.notes)
    assert np.array_equal(
        np.asarray(decoded.image), np.asarray(decode_image(plain.getvalue(), max_pixels=MAX_PIXELS).image)
    )
    store = ImageStore(tmp_path, fsync=False)
    _, record = uploaded(store, big.getvalue(), min_side=None)
    data, _ = store.read_bytes(record.id)
    assert not record.staged and record.format == "png" and b"iCCP" not in data
