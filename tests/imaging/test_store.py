from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from multimodal_mcp.errors import NotFound
from multimodal_mcp.imaging.store import ImageStore
from multimodal_mcp.principals import ANONYMOUS, LOCAL, acting_as

from helpers import photo


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
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == [f"{record.id}.json", f"{record.id}.png"]


def test_an_image_whose_record_is_missing_does_not_exist(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    record = store.put(photo("coffee", 16), kind="input")
    (tmp_path / record.id[:2] / f"{record.id}.json").unlink()
    assert not store.exists(record.id)
    with pytest.raises(NotFound, match="no image with id"):
        store.read_png(record.id)


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
            for read in (store.record, store.read_png, store.open):
                with pytest.raises(NotFound, match=f"no image with id {record.id}"):
                    read(record.id)


def test_the_same_bytes_from_two_principals_share_an_id_but_not_the_knowledge(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    img = photo("astronaut", 16)
    with acting_as("user:alice"):
        first = store.put_input(img, source="base64")
    with acting_as("user:bob"):
        second = store.put_input(img, source="path")
        assert second.id == first.id and store.read_png(first.id)
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


def test_opening_a_store_removes_what_an_interrupted_write_left_behind(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    kept = store.put(photo("coffee", 16), kind="input")
    lost = store.put(photo("chelsea", 16), kind="input")
    folder = tmp_path / kept.id[:2]
    (folder / f".{kept.id}.json.x1y2.tmp").write_bytes(b"{half")
    (folder / "00000000000000ff.png").write_bytes(b"\x89PNG")  # killed before its record was written
    (tmp_path / lost.id[:2] / f"{lost.id}.png").unlink()  # a record pointing at nothing
    reopened = ImageStore(tmp_path)
    assert not reopened.exists(lost.id) and reopened.exists(kept.id)
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == [f"{kept.id}.json", f"{kept.id}.png"]


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
