"""The image store on obstore ([server.store] url): the same behaviour as on disk, records in the
object store as the only truth, configuration checked up front."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from multimodal_mcp.config import StoreSettings
from multimodal_mcp.errors import NotFound, UnsupportedOperation
from multimodal_mcp.imaging.codec import decode_image
from multimodal_mcp.imaging.store import ImageStore, open_image_store
from multimodal_mcp.principals import acting_as

from helpers import photo

pytest.importorskip("obstore")
from obstore.store import LocalStore, MemoryStore

from multimodal_mcp.imaging.object_store import ObjectStoreBackend


@pytest.fixture(params=["MemoryStore", "LocalStore"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    inner = MemoryStore() if request.param == "MemoryStore" else LocalStore(tmp_path)
    return ImageStore(backend=ObjectStoreBackend(inner, location=request.param))


def test_an_image_written_to_an_object_store_reads_back_from_a_second_server_on_it(tmp_path: Path) -> None:
    shared = MemoryStore()
    record = ImageStore(backend=ObjectStoreBackend(shared, location="memory")).put(
        photo("chelsea", 32), kind="generated", prompt="a cat", seed=4
    )
    other = ImageStore(backend=ObjectStoreBackend(shared, location="memory"))  # nothing cached
    assert other.record(record.id) == record
    assert other.open(record.id).tobytes() == photo("chelsea", 32).tobytes()
    data, mime = other.read_bytes(record.id)
    assert mime == "image/png" and hashlib.sha256(data).hexdigest() == record.sha256
    assert other.file_size(record.id) == len(data)
    assert [r.id for r in other.recent(5)] == [record.id]  # found by listing the bucket


def test_the_object_store_keeps_the_local_layout_and_owners(store: ImageStore) -> None:
    with acting_as("user:alice"):
        record = store.put(photo("coffee", 16), kind="generated", seed=1)
    keys = sorted(info.key for info in store.backend.list())
    assert keys == [f"{record.id[:2]}/{record.id}.json", f"{record.id[:2]}/{record.id}.png"]
    with acting_as("user:bob"):
        assert not store.exists(record.id)
        with pytest.raises(NotFound, match=f"no image with id {record.id}"):
            store.open(record.id)


def test_a_second_owner_is_added_on_a_store_that_updates_conditionally() -> None:
    store = ImageStore(backend=ObjectStoreBackend(MemoryStore(), location="memory"))
    with acting_as("user:alice"):
        first = store.put_input(photo("astronaut", 16), source="base64")
    with acting_as("user:bob"):
        assert store.put_input(photo("astronaut", 16), source="path").id == first.id
        assert store.record(first.id).owners == ["user:alice", "user:bob"]


def test_a_store_that_cannot_update_conditionally_says_so_instead_of_losing_an_owner(tmp_path: Path) -> None:
    store = ImageStore(backend=ObjectStoreBackend(LocalStore(tmp_path), location="file"))
    with acting_as("user:alice"):
        first = store.put_input(photo("astronaut", 16), source="base64")
    refused = pytest.raises(UnsupportedOperation, match="cannot update an object conditionally")
    with acting_as("user:bob"), refused:
        store.put_input(photo("astronaut", 16), source="path")
    with acting_as("user:alice"):
        assert store.record(first.id).owners == ["user:alice"]


def test_the_same_upload_is_found_again_without_decoding_it(store: ImageStore) -> None:
    buf = io.BytesIO()
    photo("astronaut", 48).save(buf, format="JPEG", quality=90)
    raw = buf.getvalue()
    first = store.commit(store.prepare_input(decode_image(raw, max_pixels=10**6), raw=raw, source="path"))
    known = store.prepare_known(hashlib.sha256(raw).hexdigest(), source="base64")
    assert known is not None and known.record.id == first.id and known.data == store.read_bytes(first.id)[0]


def test_an_object_store_has_no_local_paths_and_enforces_no_retention(
    store: ImageStore, caplog: pytest.LogCaptureFixture
) -> None:
    record = store.put(photo("coffee", 16), kind="generated")
    with pytest.raises(UnsupportedOperation, match="use delivery 'preview'"):
        store.path(record.id)
    with caplog.at_level(logging.WARNING):
        limited = ImageStore(backend=store.backend, retention=StoreSettings(max_bytes=1, max_age_days=1))
    assert "lifecycle rule" in caplog.text
    assert limited.enforce() == [] and limited.exists(record.id)


def test_server_store_url_opens_an_object_store_and_bad_urls_are_refused_up_front(tmp_path: Path) -> None:
    store = open_image_store(tmp_path / "unused", StoreSettings(url="memory://", max_bytes=0, max_age_days=0))
    assert isinstance(store.backend, ObjectStoreBackend) and not (tmp_path / "unused").exists()
    record = store.put(Image.new("RGB", (8, 8), "red"), kind="control")
    assert store.read_bytes(record.id)[1] == "image/png"
    for bad in ("file:///tmp/images", "ftp://host/x", "bucket/prefix"):
        with pytest.raises(ValidationError, match="is not an object store URL; use one of"):
            StoreSettings(url=bad)
    with pytest.raises(ValueError, match=r"\[server\.store\] url"):
        open_image_store(tmp_path, StoreSettings(url="s3://bucket/x", options={"no_such_option": "1"}))


@pytest.mark.model
async def test_path_delivery_on_an_object_store_is_refused_before_any_work(
    tmp_path: Path, tiny_dir: Path
) -> None:
    from mcp import Client

    from multimodal_mcp.config import load_config
    from multimodal_mcp.server.app import build_server, create_services

    from helpers import call_error, call_ok, cpu_only

    config_file = tmp_path / "config.toml"
    config_file.write_text('[server.store]\nurl = "memory://"\nmax_bytes = 0\nmax_age_days = 0\n')
    config = load_config(
        profile="tiny",
        config_file=config_file,
        cache_dir=tmp_path / "cache",
        home=tmp_path,
        overrides={"tiny_dir": tiny_dir},
        transport="stdio",
    )
    services = create_services(config, devices=cpu_only())
    server = build_server(config, services)
    async with Client(server) as client:
        arguments = {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": 1}
        error = await call_error(client, "generate_image", {**arguments, "delivery": "path"})
        assert "object store" in error and "'preview'" in error
        assert services.store.recent(limit=10) == []  # refused up front: nothing was generated or stored
        made = await call_ok(client, "generate_image", {**arguments, "delivery": "none"})
        assert made["images"][0]["uri"].startswith("image://")


def test_an_object_store_url_without_obstore_is_a_config_error_naming_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from multimodal_mcp.config import ConfigError, load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "obstore" else real(name, *a)
    )
    config_file = tmp_path / "config.toml"
    config_file.write_text('[server.store]\nurl = "s3://bucket/images"\n')
    with pytest.raises(ConfigError, match=r"pip install 'multimodal-mcp\[s3\]'"):
        load_config(profile="tiny", config_file=config_file, cache_dir=tmp_path, home=tmp_path)
