from __future__ import annotations

from pathlib import Path

import pytest

from multimodal_mcp.errors import NotFound
from multimodal_mcp.imaging.store import ImageStore

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
