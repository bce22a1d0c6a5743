"""The StoreBackend contract, shared by every backend (the local disk, obstore's MemoryStore and
LocalStore), and the store's conditional record writes under a fixed interleaving of two writers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from multimodal_mcp.imaging.storage import Conflict, LocalDiskBackend, PutMode, StoreBackend, Stored
from multimodal_mcp.imaging.store import ImageStore
from multimodal_mcp.principals import acting_as

from helpers import photo

obstore = pytest.importorskip("obstore")
from obstore.store import LocalStore, MemoryStore  # noqa: E402

from multimodal_mcp.imaging.object_store import ObjectStoreBackend  # noqa: E402

BACKENDS: dict[str, Callable[[Path], StoreBackend]] = {
    "local disk": lambda root: LocalDiskBackend(root, fsync=False),
    "obstore MemoryStore": lambda root: ObjectStoreBackend(MemoryStore(), location="memory://"),
    "obstore LocalStore": lambda root: ObjectStoreBackend(LocalStore(root), location=str(root)),
}
UPDATES = ("local disk", "obstore MemoryStore")  # obstore's LocalStore cannot update conditionally


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    made = BACKENDS[request.param](tmp_path)
    made.name = request.param  # type: ignore[attr-defined]
    return made


def test_every_backend_stores_reads_lists_and_deletes_bytes_by_key(backend: StoreBackend) -> None:
    assert backend.get("ab/abc.json") is None and backend.read("ab/abc.json") is None
    backend.put("ab/abc.json", b"{}")
    backend.put("cd/cde.png", b"\x89PNG")
    assert backend.read("ab/abc.json") == b"{}" and backend.size("cd/cde.png") == 4
    assert sorted(info.key for info in backend.list()) == ["ab/abc.json", "cd/cde.png"]
    assert [info.size for info in backend.list("cd/")] == [4]
    backend.delete("ab/abc.json")
    backend.delete("ab/abc.json")  # removing what is not there is no error
    assert backend.get("ab/abc.json") is None and backend.size("ab/abc.json") is None


def test_creating_a_key_that_exists_is_a_conflict(backend: StoreBackend) -> None:
    backend.put("ab/abc.json", b"first", mode="create")
    with pytest.raises(Conflict):
        backend.put("ab/abc.json", b"second", mode="create")
    assert backend.read("ab/abc.json") == b"first"


def test_an_update_based_on_a_stale_read_is_a_conflict(backend: StoreBackend) -> None:
    if backend.name not in UPDATES:  # type: ignore[attr-defined]
        pytest.skip("obstore's LocalStore does not implement conditional updates")
    backend.put("ab/abc.json", b"v1", mode="create")
    read = backend.get("ab/abc.json")
    assert read is not None
    backend.put("ab/abc.json", b"v2", mode=read.version)
    newer = backend.get("ab/abc.json")
    assert newer is not None and newer.version != read.version
    with pytest.raises(Conflict):
        backend.put("ab/abc.json", b"v3", mode=read.version)  # v1's version: v2 is there now
    backend.put("ab/abc.json", b"v3", mode=newer.version)
    assert backend.read("ab/abc.json") == b"v3"
    backend.delete("ab/abc.json")
    with pytest.raises(Conflict):
        backend.put("ab/abc.json", b"v4", mode=newer.version)  # removed since: no update recreates it


class Scripted:
    """A backend that runs ``before_put``/``after_get`` hooks around the inner backend's calls to
    record keys, logging what happened (to force one interleaving of two writers)."""

    def __init__(self, inner: StoreBackend, log: list[str], name: str) -> None:
        self.inner, self.log, self.name, self.location = inner, log, name, inner.location
        self.after_get: Callable[[], None] = lambda: None
        self.before_put: Callable[[], None] = lambda: None

    def get(self, key: str) -> Stored | None:
        found = self.inner.get(key)
        if key.endswith(".json"):
            self.log.append(f"{self.name} reads")
            self.after_get()
        return found

    def put(self, key: str, data: bytes, *, mode: PutMode = "overwrite") -> None:
        if not key.endswith(".json"):
            self.inner.put(key, data, mode=mode)
            return
        self.before_put()
        try:
            self.inner.put(key, data, mode=mode)
        except Conflict:
            self.log.append(f"{self.name} conflicts")
            raise
        self.log.append(f"{self.name} writes")

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def _two_stores(kind: str, root: Path) -> Iterator[ImageStore]:
    if kind == "local disk":  # two stores on one directory, as two processes would open it
        yield ImageStore(root, fsync=False)
        yield ImageStore(root, fsync=False)
    else:
        shared = ObjectStoreBackend(MemoryStore(), location="memory://")
        yield ImageStore(backend=shared)
        yield ImageStore(backend=shared)


@pytest.mark.parametrize("kind", UPDATES)
def test_two_owners_added_at_once_both_survive_the_losing_writer_rereading_and_retrying(
    kind: str, tmp_path: Path
) -> None:
    first, second = _two_stores(kind, tmp_path)
    img = photo("coffee", 16)
    with acting_as("user:carol"):
        stored = first.put_input(img, source="base64")
    log: list[str] = []
    a = Scripted(first.backend, log, "A")
    b = Scripted(second.backend, log, "B")
    first.backend, second.backend = a, b
    b_read, a_wrote = threading.Event(), threading.Event()
    # A reads, B reads, A writes, B's conditional write fails, B reads again and writes.
    a.before_put = lambda: b_read.wait(10) or pytest.fail("B never read")
    b.after_get = lambda: b_read.set()
    b.before_put = lambda: a_wrote.wait(10) or pytest.fail("A never wrote")
    a.after_get = lambda: None
    errors: list[BaseException] = []

    def add(store: ImageStore, principal: str, done: threading.Event | None) -> None:
        try:
            with acting_as(principal):
                store.put_input(img, source="path")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            if done is not None:
                done.set()

    writer_b = threading.Thread(target=add, args=(second, "user:bob", None))
    writer_a = threading.Thread(target=add, args=(first, "user:alice", a_wrote))
    writer_a.start()
    assert not b_read.wait(0.05)  # A has read and is held before its write until B has read
    writer_b.start()
    writer_a.join(20)
    writer_b.join(20)
    assert not errors and not writer_a.is_alive() and not writer_b.is_alive()
    assert log == ["A reads", "B reads", "A writes", "B conflicts", "B reads", "B writes"]
    for store in (first, second):
        with acting_as("user:carol"):
            assert store.record(stored.id).owners == ["user:carol", "user:alice", "user:bob"]


@pytest.mark.parametrize("kind", UPDATES)
def test_update_record_reapplies_a_change_to_the_record_another_writer_changed(
    kind: str, tmp_path: Path
) -> None:
    first, second = _two_stores(kind, tmp_path)
    with acting_as("user:carol"):
        stored = first.put(photo("coffee", 16), kind="generated", seed=1)
        log: list[str] = []
        a = Scripted(first.backend, log, "A")
        first.backend = a
        interfered = []

        def other_writer() -> None:  # between A's read and A's write, once
            if not interfered:
                interfered.append(1)
                second.update_record(stored.id, lambda r: r.model_copy(update={"prompt": "by B"}))

        a.after_get = other_writer
        result = first.update_record(stored.id, lambda r: r.model_copy(update={"model": "by A"}))
    assert log == ["A reads", "A conflicts", "A reads", "A writes"]
    assert (result.prompt, result.model) == ("by B", "by A")
