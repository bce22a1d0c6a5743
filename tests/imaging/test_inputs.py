from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

from multimodal_mcp.config import Limits
from multimodal_mcp.errors import ImageInputError, NotFound
from multimodal_mcp.imaging.inputs import ImageResolver
from multimodal_mcp.imaging.store import ImageStore
from multimodal_mcp.imaging.store_index import INDEX_NAME

from helpers import b64_png, photo


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    photo("chelsea", 16).save(root / "cat.png")
    return root


@pytest.fixture
def resolver(tmp_path: Path, root: Path) -> ImageResolver:
    return ImageResolver(ImageStore(tmp_path / "store"), (root,), Limits())


def test_a_file_under_an_allowed_root_is_read_and_stored_once_committed(
    resolver: ImageResolver, root: Path
) -> None:
    resolved = resolver.resolve(str(root / "cat.png"))
    assert resolved.record.kind == "input" and resolved.record.source == "path"
    assert resolved.pending is not None and not resolver.store.exists(resolved.record.id)
    assert resolver.store.commit(resolved.pending).id == resolved.record.id
    assert resolver.resolve(resolved.record.uri).image.tobytes() == resolved.image.tobytes()


def test_paths_that_escape_the_allowed_roots_are_refused(
    resolver: ImageResolver, root: Path, tmp_path: Path
) -> None:
    sibling = tmp_path / "root2"  # shares the prefix "root"
    sibling.mkdir()
    photo("coffee", 16).save(sibling / "x.png")
    outside = tmp_path / "outside.png"
    photo("coffee", 16).save(outside)
    os.symlink(outside, root / "link.png")
    for value in (
        str(sibling / "x.png"),
        str(root / ".." / "outside.png"),
        str(root / "link.png"),
        "/etc/passwd",
    ):
        with pytest.raises(ImageInputError, match="outside the directories this server may read"):
            resolver.resolve(value)


def test_a_stored_image_s_path_outside_the_roots_is_refused_with_its_id_as_the_way(
    resolver: ImageResolver, root: Path
) -> None:
    # delivery="path" hands out the stored file's path; the store is not among --allow-root's roots.
    stored = resolver.resolve(b64_png(photo("coffee", 16)))
    assert stored.pending is not None
    record = resolver.store.commit(stored.pending)
    path = resolver.store.path(record.id)
    with pytest.raises(ImageInputError, match=f"Pass image://{record.id} instead"):
        resolver.resolve(str(path))
    with pytest.raises(ImageInputError, match="as base64 instead") as refused:
        resolver.resolve(str(path.with_suffix(".json")))  # a record is not an image to pass back
    assert "image://" not in str(refused.value)


def test_nul_bytes_relative_paths_urls_and_encoded_traversal_are_refused(
    resolver: ImageResolver, root: Path
) -> None:
    with pytest.raises(ImageInputError, match="NUL"):
        resolver.resolve(str(root / "cat.png") + "\x00.png")
    with pytest.raises(ImageInputError, match="neither an absolute file path nor base64"):
        resolver.resolve("cat.png")
    with pytest.raises(ImageInputError, match="fetching URLs is turned off"):
        resolver.resolve("http://169.254.169.254/latest/meta-data")
    with pytest.raises(ImageInputError, match="file:// URLs are not read"):
        resolver.resolve("file:///etc/passwd")
    with pytest.raises(ImageInputError, match="no such file"):
        resolver.resolve(str(root / "%2e%2e" / "outside.png"))


def test_no_allowed_roots_means_no_file_access(tmp_path: Path, root: Path) -> None:
    resolver = ImageResolver(ImageStore(tmp_path / "s"), (), Limits())
    with pytest.raises(ImageInputError, match="reading files is disabled"):
        resolver.resolve(str(root / "cat.png"))


def test_base64_and_unknown_ids_resolve_or_fail_clearly(resolver: ImageResolver) -> None:
    resolved = resolver.resolve(b64_png(photo("astronaut", 16)))
    assert resolved.image.size == (16, 16) and resolved.record.source == "base64"
    with pytest.raises(NotFound, match="image: no image with id 0000000000000000"):
        resolver.resolve("image://0000000000000000")
    with pytest.raises(ImageInputError, match="empty"):
        resolver.resolve("  ")


def test_a_file_over_the_byte_limit_is_refused_before_reading(tmp_path: Path, root: Path) -> None:
    resolver = ImageResolver(ImageStore(tmp_path / "s"), (root,), Limits(max_input_bytes=1024))
    photo("astronaut", 128).save(root / "big.png")
    with pytest.raises(ImageInputError, match="limit is 1024 bytes"):
        resolver.resolve(str(root / "big.png"))


# --- hostile paths --------------------------------------------------------------------------------


def test_dotdot_and_symlinks_are_resolved_before_the_root_check(
    resolver: ImageResolver, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret"
    outside.mkdir()
    photo("coffee", 16).save(outside / "x.png")
    os.symlink(outside, root / "dirlink")  # a directory symlink that leaves the root
    inside = root / "sub"
    inside.mkdir()
    os.symlink(root / "cat.png", inside / "ok.png")  # a symlink that stays inside is fine
    for value in (
        f"{root}/../secret/x.png",
        f"{root}/sub/../../secret/x.png",
        f"{root}/dirlink/x.png",
        f"{root}/dirlink/../secret/x.png",  # '..' after a symlink is taken from the link's target
        f"{root}/sub/../../secret/missing.png",  # refused whether or not the file exists
    ):
        with pytest.raises(ImageInputError, match="outside the directories this server may read"):
            resolver.resolve(value)
    assert resolver.resolve(str(inside / "ok.png")).image.size == (16, 16)
    assert resolver.resolve(f"{root}/sub/../cat.png").image.size == (16, 16)


def test_a_sibling_directory_sharing_the_roots_prefix_is_outside(
    resolver: ImageResolver, root: Path, tmp_path: Path
) -> None:
    for sibling in (tmp_path / "root-evil", tmp_path / "rootx"):
        sibling.mkdir()
        photo("coffee", 16).save(sibling / "x.png")
        with pytest.raises(ImageInputError, match="outside the directories"):
            resolver.resolve(str(sibling / "x.png"))


def test_encoded_traversal_uris_home_and_backslashes_are_not_interpreted(
    resolver: ImageResolver, root: Path
) -> None:
    cases = {
        f"{root}/%2e%2e/%2e%2e/etc/passwd": "no such file",
        f"{root}/%2E%2E%2Fetc%2Fpasswd": "no such file",
        f"{root}/..%2f..%2fetc/passwd": "no such file",
        f"file://{root}/cat.png": "file:// URLs are not read",
        "FILE:///etc/passwd": "URLs are not read",
        "~/cat.png": "'~' is not expanded",
        "~root/.ssh/id_rsa": "'~' is not expanded",
        f"{root}\\..\\..\\etc\\passwd": "backslash",
        "C:\\Windows\\win.ini": "backslash",
        f"{root}/" + "a" * 300 + ".png": "longer than 255 bytes",
        "/" + "a/" * 2100: "too long for a path",
        f"{root}/cat.png\x00.jpg": "NUL",
        "\\\\server\\share\\x.png": "backslash",
    }
    for value, message in cases.items():
        with pytest.raises(ImageInputError, match=message):
            resolver.resolve(value)


def test_special_files_under_the_root_are_refused_without_blocking(
    resolver: ImageResolver, root: Path
) -> None:
    os.mkfifo(root / "pipe.png")  # opening a FIFO for reading would wait for a writer forever
    with pytest.raises(ImageInputError, match="not a regular file"):
        resolver.resolve(str(root / "pipe.png"))
    with pytest.raises(ImageInputError, match="not a regular file"):
        resolver.resolve(str(root))


def test_a_file_with_an_image_extension_but_other_content_is_refused(
    resolver: ImageResolver, root: Path
) -> None:
    (root / "fake.png").write_bytes(b"8BPS\x00\x01" + b"\x00" * 100)  # a PSD header
    with pytest.raises(ImageInputError, match="not an image in an accepted format"):
        resolver.resolve(str(root / "fake.png"))


def test_image_ids_cannot_traverse_the_store(resolver: ImageResolver) -> None:
    for value in (
        "image://../../etc/passwd",
        "image://0123456789abcdef/../x",
        "image://%2e%2e/x",
        "image://~",
    ):
        with pytest.raises(NotFound, match="is not an image id"):
            resolver.resolve(value)


def test_truncated_jpeg_base64_is_read_as_base64_and_not_echoed_as_a_path(resolver: ImageResolver) -> None:
    import base64
    import io

    buf = io.BytesIO()
    photo("coffee", 32).save(buf, format="JPEG")
    encoded = base64.b64encode(buf.getvalue()).decode()
    truncated = encoded[: len(encoded) // 2 + 1]  # starts with "/9j/", length not a multiple of 4
    assert truncated.startswith("/9j/") and len(truncated) % 4
    with pytest.raises(ImageInputError) as raised:
        resolver.resolve(truncated)
    message = str(raised.value)
    assert "file" not in message and "path" not in message
    assert truncated[:40] not in message


def test_resolving_writes_nothing_and_the_same_bytes_are_decoded_once(
    resolver: ImageResolver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_mcp.imaging import inputs

    decodes: list[int] = []
    real = inputs.decode_image
    monkeypatch.setattr(inputs, "decode_image", lambda data, **kw: (decodes.append(1), real(data, **kw))[1])
    value = b64_png(photo("astronaut", 16))
    first = resolver.resolve(value)
    assert not any(p.is_file() and not p.name.startswith(INDEX_NAME) for p in (tmp_path / "store").rglob("*"))
    assert first.pending is not None
    resolver.store.commit(first.pending)
    again = resolver.resolve(value)
    assert again.record.id == first.record.id and again.image.tobytes() == first.image.tobytes()
    assert decodes == [1]  # found by the hash of the bytes sent: read back, not decoded and encoded


def test_a_large_jpeg_is_read_at_the_scale_its_use_needs_and_stored_whole(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store", fsync=False)
    resolver = ImageResolver(store, (), Limits())
    buf = io.BytesIO()
    photo("astronaut", 512).resize((2048, 1536)).save(buf, format="JPEG", quality=90)
    resolved = resolver.resolve(
        "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), min_side=300
    )
    assert resolved.image.size == (512, 384)  # 1/4 scale: both sides still >= 300
    assert (resolved.record.width, resolved.record.height) == (2048, 1536)
    assert resolved.pending is not None
    store.commit(resolved.pending)
    assert store.open(resolved.record.id).size == (2048, 1536)  # the stored image is the whole photo


def _large_jpeg(width: int = 2048, height: int = 1536) -> bytes:
    buf = io.BytesIO()
    photo("astronaut", 512).resize((width, height)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_a_data_uri_sent_again_is_recognised_by_the_hash_of_its_bytes_and_not_decoded_as_an_image_again(
    resolver: ImageResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_mcp.imaging import inputs

    decodes: list[int] = []
    real = inputs.decode_image
    monkeypatch.setattr(inputs, "decode_image", lambda data, **kw: (decodes.append(1), real(data, **kw))[1])
    value = "data:image/png;base64," + b64_png(photo("chelsea", 32))
    first = resolver.resolve(value)
    assert first.pending is not None
    resolver.store.commit(first.pending)
    again = resolver.resolve(value)
    assert again.record.id == first.record.id and again.image.tobytes() == first.image.tobytes()
    assert decodes == [1]
    assert again.pending is not None and again.pending.data == first.pending.data  # read back, not encoded


def test_an_id_of_a_large_jpeg_gives_the_reduced_picture_the_first_call_got_and_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multimodal_mcp.imaging import inputs

    store = ImageStore(tmp_path / "store", fsync=False)
    resolver = ImageResolver(store, (), Limits())
    first = resolver.resolve(
        "data:image/jpeg;base64," + base64.b64encode(_large_jpeg()).decode(), min_side=300
    )
    assert first.pending is not None
    store.commit(first.pending)
    fresh = ImageResolver(store, (), Limits())  # nothing in memory: the stored JPEG is decoded again
    decodes: list[int] = []
    real = inputs.decode_image
    monkeypatch.setattr(inputs, "decode_image", lambda data, **kw: (decodes.append(1), real(data, **kw))[1])
    by_id = fresh.resolve(first.record.uri, min_side=300)
    assert by_id.image.size == (512, 384) and by_id.image.tobytes() == first.image.tobytes()
    assert (by_id.record.width, by_id.record.height) == (2048, 1536)
    again = fresh.resolve(first.record.uri, min_side=300)
    assert again.image.tobytes() == by_id.image.tobytes()
    assert decodes == [1]  # the second read comes from memory
    assert fresh.resolve(first.record.uri).image.size == (2048, 1536)  # no min_side: the whole image


def test_an_id_of_a_large_lossless_image_is_reduced_by_a_power_of_two_for_a_use_needing_fewer_pixels(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path / "store", fsync=False)
    resolver = ImageResolver(store, (), Limits())
    record = store.put_input(photo("astronaut", 512).resize((1600, 1200)), source="data")
    assert resolver.resolve(record.uri, min_side=400).image.size == (800, 600)  # 1/2: 1/4 is under 400
    assert resolver.resolve(record.uri, min_side=300).image.size == (400, 300)  # 1/4: still 300
    assert resolver.resolve(record.uri, min_side=100).image.size == (200, 150)  # 1/8 at most
    assert resolver.resolve(record.uri, min_side=700).image.size == (1600, 1200)  # not twice 700: whole


def test_a_phone_portrait_jpeg_is_read_reduced_turned_and_stored_as_sent(tmp_path: Path) -> None:
    # A phone held upright writes a landscape JPEG with EXIF orientation 6 (and its make, place...).
    # It is read like an upright photo: at the scale the use needs, turned; stored as its own bytes
    # minus the metadata (the orientation tag kept), never decoded whole, turned and encoded again.
    from PIL import Image, ImageOps

    store = ImageStore(tmp_path / "store", fsync=False)
    resolver = ImageResolver(store, (), Limits())
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0110] = 6, "PhoneMaker", "Model X"
    buf = io.BytesIO()
    photo("astronaut", 512).resize((2048, 1536)).save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    raw = buf.getvalue()
    value = "data:image/jpeg;base64," + base64.b64encode(raw).decode()
    first = resolver.resolve(value, min_side=300)
    assert first.image.size == (384, 512)  # 1/4 scale, turned upright
    assert (first.record.width, first.record.height) == (1536, 2048)
    assert first.record.format == "jpeg" and first.pending is not None
    assert b"PhoneMaker" not in first.pending.data and len(first.pending.data) < len(raw)
    store.commit(first.pending)
    with Image.open(io.BytesIO(raw)) as original:
        upright = ImageOps.exif_transpose(original).convert("RGB")
    whole = store.open(first.record.id)
    assert whole.size == (1536, 2048) and whole.tobytes() == upright.tobytes()
    fresh = ImageResolver(store, (), Limits())  # nothing in memory: the stored JPEG is read again
    assert fresh.resolve(first.record.uri, min_side=300).image.tobytes() == first.image.tobytes()
    again = fresh.resolve(value, min_side=300)  # the same bytes sent again: found by their hash
    assert again.record.id == first.record.id and again.image.tobytes() == first.image.tobytes()


def test_the_kept_form_made_while_decoding_is_the_stored_form_and_hashed_right(tmp_path: Path) -> None:
    # The stripped bytes are made on another thread while the pixels decode; the store gets exactly
    # what compact_input makes after the decode, with the SHA-256 of those bytes as the id.
    import hashlib

    from PIL import Image

    from multimodal_mcp.imaging.codec import decode_image
    from multimodal_mcp.imaging.compact import compact_input

    from helpers import swapped_profile

    resolver = ImageResolver(ImageStore(tmp_path / "store", fsync=False), (), Limits())
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "PhoneMaker"
    cases = {
        "jpeg, turned, with exif": {"format": "JPEG", "exif": exif.tobytes()},
        "jpeg, nothing to strip": {"format": "JPEG"},
        "png with text": {"format": "PNG", "pnginfo": _png_text()},
        "jpeg to convert (not kept)": {"format": "JPEG", "icc_profile": swapped_profile()},
    }
    for name, options in cases.items():
        buf = io.BytesIO()
        photo("chelsea", 96).save(buf, **options)
        raw = buf.getvalue()
        resolved = resolver.resolve(base64.b64encode(raw).decode(), min_side=32)
        assert resolved.pending is not None
        expected = compact_input(raw, decode_image(raw, max_pixels=10**8))
        assert resolved.pending.data == expected.data, name
        assert resolved.record.format == expected.format, name
        assert resolved.record.sha256 == hashlib.sha256(resolved.pending.data).hexdigest(), name
        assert resolved.record.id == resolved.record.sha256[:16], name


def _png_text():  # type: ignore[no-untyped-def]
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "an editor")
    return info
