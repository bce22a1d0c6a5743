"""Retention ([server.store]): each rule on a real store directory, and the plan on its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from multimodal_mcp.config import StoreSettings
from multimodal_mcp.imaging.retention import Entry, plan_removals
from multimodal_mcp.imaging.store import ImageRecord, ImageStore, holding
from multimodal_mcp.imaging.store_index import INDEX_NAME

UNLIMITED = StoreSettings(max_bytes=0, max_age_days=0)


def noise(seed: int, side: int = 32) -> Image.Image:
    """An image that does not compress: each costs about the same bytes on disk."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def on_disk(root: Path) -> int:
    """Bytes of the images and records (the index left out: it is not part of the running total)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.name.startswith(INDEX_NAME))


def ids_on_disk(root: Path) -> set[str]:
    return {p.stem for p in root.rglob("*.json")}


def backdate(store: ImageStore, record: ImageRecord, days: float) -> None:
    """Make ``record`` look ``days`` old (its ``created``), as a store written back then would: the
    record edited by hand, then the index rebuilt from the files (:meth:`ImageStore.recover`)."""
    assert store.root is not None
    path = store.root / record.id[:2] / f"{record.id}.json"
    data = json.loads(path.read_text())
    data["created"] = (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="seconds")
    path.write_text(json.dumps(data))
    store.recover()


def test_the_running_total_is_what_the_files_take(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention=UNLIMITED)
    for i in range(5):
        store.put(noise(i), kind="generated", seed=i)
    store.put(noise(0), kind="generated", seed=0)  # the same image again: nothing new
    assert store.total_bytes == on_disk(tmp_path) > 0
    assert ImageStore(tmp_path).total_bytes == on_disk(tmp_path)  # rebuilt from the files on opening


def test_over_max_bytes_the_oldest_images_go_first_down_to_90_percent(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention=UNLIMITED)
    made = []
    for i in range(6):
        made.append(store.put(noise(i), kind="generated", seed=i))
        backdate(store, made[-1], days=6 - i)  # made[0] is the oldest
    each = on_disk(tmp_path) // 6
    limit = 4 * each + each // 2  # room for four and a half
    store = ImageStore(tmp_path, retention=StoreSettings(max_bytes=limit, max_age_days=0))
    assert ids_on_disk(tmp_path) == {r.id for r in made[2:]}  # enforced when opening
    assert store.total_bytes == on_disk(tmp_path) <= limit
    newest = store.put(noise(99), kind="generated", seed=99)  # five: over the limit, down to four
    assert store.total_bytes == on_disk(tmp_path) <= limit - limit // 10
    assert ids_on_disk(tmp_path) == {made[3].id, made[4].id, made[5].id, newest.id}
    assert store.exists(newest.id) and not store.exists(made[2].id)


def test_images_older_than_max_age_are_removed_when_the_store_opens(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    old, recent = store.put(noise(1), kind="generated"), store.put(noise(2), kind="generated")
    backdate(store, old, days=31)
    backdate(store, recent, days=29)
    store = ImageStore(tmp_path, retention=StoreSettings(max_age_days=30))
    assert ids_on_disk(tmp_path) == {recent.id} and store.total_bytes == on_disk(tmp_path)


def test_a_write_sweeps_for_old_images_once_the_sweep_is_due(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention=StoreSettings(max_age_days=1, sweep_seconds=3600))
    old = store.put(noise(1), kind="generated")
    backdate(store, old, days=2)
    store.put(noise(2), kind="generated")
    assert store.exists(old.id)  # the hourly sweep is not due yet
    store.retention = StoreSettings(max_age_days=1, sweep_seconds=1e-6)
    store.put(noise(3), kind="generated")
    assert not store.exists(old.id) and len(ids_on_disk(tmp_path)) == 2


def test_an_image_a_job_holds_is_never_removed(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention=UNLIMITED)
    held_by_job: set[str] = set()
    with holding(held_by_job):
        used = store.put(noise(1), kind="input")  # a job's input, written while it runs
    other = store.put(noise(2), kind="generated")
    for record in (used, other):
        backdate(store, record, days=100)
    store = ImageStore(tmp_path, retention=UNLIMITED)
    store.guard(lambda: held_by_job)
    store.retention = StoreSettings(max_bytes=1, max_age_days=1)
    assert store.enforce() == [other.id]
    assert ids_on_disk(tmp_path) == {used.id} == held_by_job


def test_looking_an_image_up_inside_a_job_holds_it_too(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    record = store.put(noise(1), kind="generated")
    held: set[str] = set()
    with holding(held):
        store.open(record.id)
    assert held == {record.id}


def test_an_image_a_kept_image_was_made_from_stays_until_that_image_goes(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, retention=UNLIMITED)
    source = store.put(noise(1), kind="input")
    control = store.put(noise(2), kind="control", parents=[source.id])
    made = store.put(noise(3), kind="generated", parents=[source.id, control.id])
    for record, days in ((source, 40), (control, 39), (made, 10)):
        backdate(store, record, days=days)
    store = ImageStore(tmp_path, retention=StoreSettings(max_age_days=30))
    assert ids_on_disk(tmp_path) == {source.id, control.id, made.id}  # old, but their child is kept
    store.retention = StoreSettings(max_bytes=1, max_age_days=30)  # now everything must go
    assert store.enforce() == [made.id, control.id, source.id]  # the child first, then its parents
    assert ids_on_disk(tmp_path) == set() and store.total_bytes == on_disk(tmp_path) == 0


def test_the_plan_unblocks_a_parent_when_its_last_child_goes() -> None:
    entries = {
        "parent": Entry(created=1, size=10),
        "child": Entry(created=2, size=10, parents=("parent", "gone")),
        "newer": Entry(created=3, size=10),
        "newest": Entry(created=4, size=10),
    }
    assert plan_removals(entries, total=40, budget=15, cutoff=None) == ["child", "parent", "newer"]
    assert plan_removals(entries, total=40, budget=15, cutoff=None, held={"parent"}) == [
        "child",
        "newer",
        "newest",
    ]
    assert plan_removals(entries, total=40, budget=None, cutoff=2.5) == ["child", "parent"]
    assert plan_removals(entries, total=40, budget=40, cutoff=None) == []


def test_a_retention_pass_reads_the_index_only_as_far_as_its_rules_reach(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, fsync=False, retention=UNLIMITED)
    made = [store.put(noise(i, 8), kind="generated", seed=i) for i in range(40)]
    read: list[str] = []
    oldest = store.index.oldest

    def counted(batch: int = 256) -> Iterator[tuple[str, Entry]]:
        for image_id, entry in oldest(batch=4):
            read.append(image_id)
            yield image_id, entry

    store.index.oldest = counted  # type: ignore[method-assign]
    store.retention = StoreSettings(max_bytes=store.total_bytes - 1, max_age_days=0)
    removed = store.enforce()  # over by a byte: down to 90%, the oldest written first
    assert 0 < len(removed) < 10 and removed == [r.id for r in made[: len(removed)]]
    assert len(read) <= len(removed) + 2  # then the first image kept, and one read ahead of it
    assert store.total_bytes == on_disk(tmp_path) <= store.retention.max_bytes * 0.9
    store.retention = StoreSettings(max_bytes=10**9, max_age_days=30)
    read.clear()
    assert store.enforce() == [] and read == []  # nothing due: the index's total and oldest age only
