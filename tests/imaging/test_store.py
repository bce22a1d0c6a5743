from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from multimodal_mcp.errors import NotFound
from multimodal_mcp.imaging.codec import decode_image
from multimodal_mcp.imaging.store import ImageStore
from multimodal_mcp.imaging.store_index import INDEX_NAME
from multimodal_mcp.principals import ANONYMOUS, LOCAL, acting_as

from helpers import photo


def stored_files(root: Path) -> list[str]:
    """Names of the images and records under ``root`` (the index and its WAL files left out)."""
    return sorted(p.name for p in root.rglob("*") if p.is_file() and not p.name.startswith(INDEX_NAME))


def test_an_image_and_its_record_survive_a_new_store_on_the_same_directory(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    record = store.put(
        photo("chelsea", 32), kind="generated", prompt="a cat", seed=4, model="m", parents=["ab" * 8]
    )
    reopened = ImageStore(tmp_path)
    again = reopened.record(record.id)
    assert again == record and again.uri == f"image://{record.id}"
    assert reopened.open(record.id).tobytes() == photo("chelsea", 32).tobytes()


def test_writes_leave_no_temporary_files_behind(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    record = store.put(photo("coffee", 16), kind="input")
    assert stored_files(tmp_path) == [f"{record.id}.json", f"{record.id}.png"]


def test_an_image_whose_record_is_missing_does_not_exist(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    record = store.put(photo("coffee", 16), kind="input")
    (tmp_path / record.id[:2] / f"{record.id}.json").unlink()
    assert not store.exists(record.id)
    with pytest.raises(NotFound, match="no image with id"):
        store.read_bytes(record.id)


def test_ids_that_are_not_sixteen_hex_characters_are_not_looked_up(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    for bad in ("../../etc/passwd", "ABCDEF0123456789", "0123", "0123456789abcdef/../x"):
        with pytest.raises(NotFound, match="not an image id"):
            store.record(bad)


def test_ids_are_content_addresses_so_the_same_image_and_metadata_get_the_same_id(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    img = photo("astronaut", 16)
    first = store.put_input(img, source="base64")
    second = store.put_input(img, source="path")
    assert first == second and first.source == "base64"
    assert store.put_input(photo("chelsea", 16), source="base64").id != first.id
    made = store.put(img, kind="generated", prompt="a", seed=1)
    assert made.id != first.id  # the embedded parameters are part of the content
    assert store.put(img, kind="generated", prompt="a", seed=1) == made
    assert store.put(img, kind="generated", prompt="a", seed=2).id != made.id


def test_images_belong_to_the_principal_that_stored_them(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    with acting_as("user:alice"):
        record = store.put(photo("coffee", 16), kind="generated", prompt="mine", seed=1)
        assert store.exists(record.id) and store.open(record.id).size == (16, 16)
    for other in ("user:bob", LOCAL, ANONYMOUS):
        with acting_as(other):
            assert not store.exists(record.id)
            for read in (store.record, store.read_bytes, store.open, store.path):
                with pytest.raises(NotFound, match=f"no image with id {record.id}"):
                    read(record.id)


def test_the_same_bytes_from_two_principals_share_an_id_but_not_the_knowledge(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    img = photo("astronaut", 16)
    with acting_as("user:alice"):
        first = store.put_input(img, source="base64")
    with acting_as("user:bob"):
        second = store.put_input(img, source="path")
        assert second.id == first.id and store.read_bytes(first.id)
    with acting_as("user:carol"):
        assert not store.exists(first.id)
    with acting_as("user:alice"):  # a new store on the directory keeps the owners
        assert ImageStore(tmp_path).record(first.id).owners == ["user:alice", "user:bob"]


def test_records_written_before_owners_existed_belong_to_the_local_user(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    record = store.put(photo("coffee", 16), kind="input")
    json_path = tmp_path / record.id[:2] / f"{record.id}.json"
    legacy = json.loads(json_path.read_text())
    del legacy["owners"]
    json_path.write_text(json.dumps(legacy))
    for principal in (LOCAL, ANONYMOUS):
        with acting_as(principal):
            assert store.exists(record.id)
    with acting_as("user:alice"):
        assert not store.exists(record.id)
        store.put(photo("coffee", 16), kind="input")  # alice sends the same bytes: now hers too
        assert store.exists(record.id)
    with acting_as(LOCAL):
        assert store.exists(record.id)


def test_recovering_a_store_removes_what_interrupted_writes_and_hand_edits_left_behind(
    tmp_path: Path,
) -> None:
    store = ImageStore(tmp_path)
    kept = store.put(photo("coffee", 16), kind="input")
    lost = store.put(photo("chelsea", 16), kind="input")
    folder = tmp_path / kept.id[:2]
    (folder / f".{kept.id}.json.x1y2.tmp").write_bytes(b"{half")
    (folder / "00000000000000ff.png").write_bytes(b"\x89PNG")  # killed before its record was written
    (tmp_path / lost.id[:2] / f"{lost.id}.png").unlink()  # a record pointing at nothing
    del store  # the writer is gone (a store still open keeps the fresh leftovers: test_store_sharing)
    reopened = ImageStore(tmp_path)
    assert reopened.recover() == {"temporary": 1, "image_without_record": 1, "record_without_image": 1}
    assert not reopened.exists(lost.id) and reopened.exists(kept.id)
    assert stored_files(tmp_path) == [f"{kept.id}.json", f"{kept.id}.png"]
    assert reopened.total_bytes == kept_size(tmp_path, kept.id)


def kept_size(root: Path, image_id: str) -> int:
    return sum(p.stat().st_size for p in (root / image_id[:2]).glob(f"{image_id}.*"))


KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
from PIL import Image
from multimodal_mcp.imaging.store import ImageStore
store = ImageStore(Path(sys.argv[1]))
renames = {"image": 1, "record": 2}[sys.argv[2]]
real_replace, real_link, calls = os.replace, os.link, [0]
def dying(*args):
    calls[0] += 1
    if calls[0] == renames:
        os.kill(os.getpid(), signal.SIGKILL)  # killed right before this rename: no cleanup at all
    return (real_replace if calls[0] == 1 else real_link)(*args)
os.replace = os.link = dying
store.put(Image.new("RGB", (8, 8), sys.argv[3]), kind="input")
"""


@pytest.mark.parametrize("killed_before", ["image", "record"])
def test_opening_a_store_settles_a_write_killed_midway_reading_only_that_write(
    tmp_path: Path, killed_before: str
) -> None:
    kept = ImageStore(tmp_path).put(photo("coffee", 16), kind="input")
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(tmp_path), killed_before, "red"], capture_output=True
    )
    assert done.returncode == -signal.SIGKILL
    left = set(stored_files(tmp_path)) | {p.name for p in tmp_path.rglob(".*.tmp")}
    assert len(left) > 2  # the killed write left a temporary file (and maybe its image)
    reopened = ImageStore(tmp_path)
    assert stored_files(tmp_path) == [f"{kept.id}.json", f"{kept.id}.png"]
    assert not list(tmp_path.rglob(".*.tmp")) and reopened.index.pending() == []
    assert reopened.total_bytes == kept_size(tmp_path, kept.id) and reopened.exists(kept.id)


KILLED_OWNER = """
import os, signal, sys
from pathlib import Path
from multimodal_mcp.imaging.store import ImageStore
from multimodal_mcp.principals import acting_as
from helpers import photo
store = ImageStore(Path(sys.argv[1]))
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed before the record's rename
with acting_as("user:bob"):
    store.put(photo("coffee", 16), kind="input")
"""


def test_an_owner_added_by_a_writer_killed_midway_leaves_nothing_once_the_store_opens(tmp_path: Path) -> None:
    with acting_as("user:alice"):
        kept = ImageStore(tmp_path).put(photo("coffee", 16), kind="input")
    done = subprocess.run(
        [sys.executable, "-c", KILLED_OWNER, str(tmp_path)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert list(tmp_path.rglob(".*.tmp"))  # the record's new version, never renamed
    reopened = ImageStore(tmp_path)
    assert not list(tmp_path.rglob(".*.tmp")) and reopened.index.pending() == []
    with acting_as("user:alice"):
        assert reopened.record(kept.id).owners == ["user:alice"]
    assert reopened.total_bytes == kept_size(tmp_path, kept.id)


def test_a_write_whose_record_landed_before_the_kill_is_indexed_when_the_store_opens(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    pending = store.prepare(photo("coffee", 16), kind="generated", seed=3)
    store.index.mark_pending(pending.record.id, "png")  # as commit does before writing ...
    store.backend.put(f"{pending.record.id[:2]}/{pending.record.id}.png", pending.data)
    store.backend.put(f"{pending.record.id[:2]}/{pending.record.id}.json", pending.record.dump())
    del store  # ... and the process died before indexing it
    reopened = ImageStore(tmp_path)
    assert reopened.index.pending() == [] and reopened.index.size(pending.record.id) is not None
    assert reopened.total_bytes == kept_size(tmp_path, pending.record.id)
    assert reopened.recent(5)[0].id == pending.record.id


def test_a_store_without_an_index_is_indexed_once_and_reads_the_same(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    records = [store.put(photo("astronaut", 16).rotate(i * 90), kind="generated", seed=i) for i in range(3)]
    total = store.total_bytes
    del store
    for name in (INDEX_NAME, f"{INDEX_NAME}-wal", f"{INDEX_NAME}-shm"):
        (tmp_path / name).unlink(missing_ok=True)  # a store written before the index existed
    migrated = ImageStore(tmp_path)
    assert migrated.index.complete and migrated.total_bytes == total
    assert {r.id for r in migrated.recent(10)} == {r.id for r in records}
    assert all(migrated.record(r.id) == r for r in records)


def test_writes_are_flushed_to_disk_unless_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    ImageStore(tmp_path / "a").put(photo("coffee", 16), kind="input")
    assert len(synced) == 4  # the PNG, the record, and the directory after each rename
    synced.clear()
    ImageStore(tmp_path / "b", fsync=False).put(photo("coffee", 16), kind="input")
    assert synced == []


def _jpeg(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kwargs)
    return buf.getvalue()


def test_a_prepared_input_is_written_only_when_committed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    raw = _jpeg(photo("astronaut", 64), comment=b"private")
    pending = store.prepare_input(decode_image(raw, max_pixels=10**6), raw=raw, source="base64")
    assert stored_files(tmp_path) == [] and not store.exists(pending.record.id)
    record = store.commit(pending)
    assert record.id == pending.record.id == record.sha256[:16]
    assert record.format == "jpeg" and record.mime_type == "image/jpeg"
    assert stored_files(tmp_path) == [f"{record.id}.jpg", f"{record.id}.json"]
    data, mime = store.read_bytes(record.id)
    assert mime == "image/jpeg" and hashlib.sha256(data).hexdigest() == record.sha256
    assert b"private" not in data and len(data) < len(raw)
    assert store.path(record.id) == (tmp_path / record.id[:2] / f"{record.id}.jpg").absolute()
    assert store.commit(pending) == record  # committing twice writes nothing new


def test_a_stored_input_reads_back_as_the_pixels_the_server_decoded(tmp_path: Path) -> None:
    gray = photo("camera", 32)  # a grayscale photo: stored as an L-mode JPEG, decoded to RGB
    raw = _jpeg(gray)
    decoded = decode_image(raw, max_pixels=10**6)
    record = ImageStore(tmp_path).commit(ImageStore(tmp_path).prepare_input(decoded, raw=raw, source="path"))
    reopened = ImageStore(tmp_path).open(record.id)  # a new store: no cache
    assert reopened.mode == decoded.image.mode == "RGB"
    assert reopened.tobytes() == decoded.image.tobytes()


def test_stores_written_before_other_formats_existed_still_read(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    record = store.put_input(photo("coffee", 16), source="base64")
    json_path = tmp_path / record.id[:2] / f"{record.id}.json"
    legacy = json.loads(json_path.read_text())
    for field in ("format", "mode", "raw_sha256"):
        legacy.pop(field)
    legacy_png = io.BytesIO()
    photo("coffee", 16).save(legacy_png, format="PNG", compress_level=1)
    (tmp_path / record.id[:2] / f"{record.id}.webp").unlink()
    (tmp_path / record.id[:2] / f"{record.id}.png").write_bytes(legacy_png.getvalue())
    json_path.write_text(json.dumps(legacy))
    reopened = ImageStore(tmp_path)
    assert reopened.record(record.id).format == "png"
    assert reopened.read_bytes(record.id) == (legacy_png.getvalue(), "image/png")
    assert reopened.open(record.id).tobytes() == photo("coffee", 16).tobytes()


def test_metadata_of_an_image_is_never_copied_into_a_stored_png(tmp_path: Path) -> None:
    img = photo("coffee", 16)
    img.info["icc_profile"] = b"x" * 100_000
    record = ImageStore(tmp_path).put(img, kind="control")
    data, _ = ImageStore(tmp_path).read_bytes(record.id)
    assert len(data) < 5_000 and b"iCCP" not in data
    assert img.info["icc_profile"]  # the caller's image is left as it was


def test_the_same_bytes_sent_again_are_read_back_not_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ImageStore(tmp_path)
    raw = _jpeg(photo("astronaut", 48))
    digest = hashlib.sha256(raw).hexdigest()
    first = store.commit(store.prepare_input(decode_image(raw, max_pixels=10**6), raw=raw, source="path"))
    pixels = store.open(first.id).tobytes()
    # The index survives a restart (raw_sha256 is in the record).
    for again, principal in ((store, "user:bob"), (ImageStore(tmp_path), "user:carol")):
        with acting_as(principal):
            known = again.prepare_known(digest, source="base64")
            assert known is not None and known.record.id == first.id
            image = known.image or decode_image(known.data, max_pixels=10**6).image  # cached, or not
            assert image.tobytes() == pixels
            assert not again.exists(first.id)  # nothing changes before the commit
            again.commit(known)
            assert again.exists(first.id)
    assert store.prepare_known(hashlib.sha256(b"other").hexdigest(), source="path") is None


def test_the_decoded_image_cache_is_bounded_by_bytes(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, cache_bytes=4 * 64 * 64 * 4)  # four 64x64 RGB images
    records = [store.put(photo("astronaut", 64).rotate(i), kind="generated", seed=i) for i in range(6)]
    assert store.cached_bytes == 4 * 64 * 64 * 4
    big = store.put(photo("astronaut", 96), kind="generated")  # over a quarter of the budget
    assert store.cached_bytes == 4 * 64 * 64 * 4
    assert store.open(big.id).size == (96, 96) and store.cached_bytes == 4 * 64 * 64 * 4
    assert store.open(records[0].id).size == (64, 64)  # evicted earlier, read back from disk
