"""The image store's index: SQLite (the standard library's ``sqlite3``), so that opening a store and
enforcing its retention read no image and no record, whatever the store's size.

One row per stored image (creation time, bytes on disk, kind, parents), the SHA-256 of bytes clients
sent (so the same upload is found without decoding it), a running total of bytes, and *pending*
rows: a write marks its id pending (committed to the index, durably when the store fsyncs) before
its first file is written and clears the mark with the image's row once its record is in place. An
interrupted write therefore always leaves a pending row; opening the store settles those rows only,
never scanning the files (:meth:`.store.ImageStore.settle_pending`).

The files stay the truth: lookups read the record itself, and a store without an index (written
before it existed, or whose index was deleted) is scanned once at opening to build it
(:meth:`.store.ImageStore.recover`, also the way to re-read files edited by hand).

Several processes may open the same store: the database is in WAL mode (readers never wait for a
writer), each write is one short ``BEGIN IMMEDIATE`` transaction, and a writer waits up to
``BUSY_SECONDS`` for another. Within a process one connection is shared under a lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from multimodal_mcp.imaging.records import ImageRecord
from multimodal_mcp.imaging.retention import Entry

INDEX_NAME = "index.sqlite3"
"""The index's file in the store's directory (with SQLite's ``-wal`` and ``-shm`` beside it)."""
BUSY_SECONDS = 60.0
SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,
    parents TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_age ON images (created, seq);
CREATE TABLE IF NOT EXISTS parents (parent TEXT NOT NULL, child TEXT NOT NULL, PRIMARY KEY (parent, child));
CREATE INDEX IF NOT EXISTS parents_by_child ON parents (child);
CREATE TABLE IF NOT EXISTS raw (sha256 TEXT PRIMARY KEY, id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS raw_by_id ON raw (id);
CREATE TABLE IF NOT EXISTS pending (
    id TEXT NOT NULL, format TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL,
    PRIMARY KEY (id, pid)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('total', '0');
"""


def created_seconds(record: ImageRecord) -> float:
    """A record's creation time in seconds since the epoch (now, when it cannot be read)."""
    try:
        return datetime.fromisoformat(record.created).timestamp()
    except ValueError:
        return time.time()


class StoreIndex:
    """The index of one store.

    Args:
        path: the database file, or None for an index in memory (one process's cache: the object
            store's, see :mod:`.object_store`).
        durable: commit with ``synchronous=FULL`` (every transaction on disk before it returns), as a
            store that fsyncs its files needs; else ``NORMAL``.
    """

    def __init__(self, path: Path | None, *, durable: bool = True) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._depth = 0
        self._db = sqlite3.connect(
            ":memory:" if path is None else path,
            timeout=BUSY_SECONDS,
            isolation_level=None,  # transactions are begun explicitly
            check_same_thread=False,  # shared by worker threads, under self._lock
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        if self._schema() == SCHEMA_VERSION:
            return  # opening an existing index writes nothing
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
            )

    def _schema(self) -> str | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.OperationalError:  # no such table: a new index
            return None
        return str(row[0]) if row is not None else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the database's write lock from its start (other processes'
        writers wait; readers do not)."""
        with self._lock:
            if self._depth:  # nested in this thread's transaction: part of it
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._depth -= 1

    def _one(self, sql: str, args: tuple[object, ...] = ()) -> tuple[object, ...] | None:
        with self._lock:
            row: tuple[object, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    # --- state ----------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Whether the index holds every image of the store (false until a first scan built it)."""
        return self._one("SELECT value FROM meta WHERE key = 'complete'") is not None

    def total(self) -> int:
        """Bytes the indexed images and their records take."""
        row = self._one("SELECT value FROM meta WHERE key = 'total'")
        return int(str(row[0])) if row is not None else 0

    def count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM images")
        return int(str(row[0])) if row is not None else 0

    # --- writes ---------------------------------------------------------------------------------

    def mark_pending(self, image_id: str, fmt: str) -> None:
        """Note that this process is about to write ``image_id``'s files."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO pending (id, format, pid, started) VALUES (?, ?, ?, ?)",
                (image_id, fmt, os.getpid(), time.time()),
            )

    def pending(self) -> list[tuple[str, str, int, float]]:
        """``(id, format, writer pid, started)`` of every write not finished."""
        with self._lock:
            return [
                (str(a), str(b), int(c), float(d)) for a, b, c, d in self._db.execute("SELECT * FROM pending")
            ]

    def clear_pending(self, image_id: str, pid: int | None = None) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM pending WHERE id = ? AND pid = ?", (image_id, pid or os.getpid()))

    def add(
        self, record: ImageRecord, size: int, *, raw_sha256: str | None = None, keep_pending: bool = False
    ) -> None:
        """Index (or re-index) a stored image taking ``size`` bytes; clears this process's pending
        mark of it, unless ``keep_pending`` (a staged input until its conversion: see .staging)."""
        with self.transaction() as db:
            self._add(db, record, size, raw_sha256)
            if not keep_pending:
                db.execute("DELETE FROM pending WHERE id = ? AND pid = ?", (record.id, os.getpid()))

    def _add(self, db: sqlite3.Connection, record: ImageRecord, size: int, raw_sha256: str | None) -> None:
        old = db.execute("SELECT size FROM images WHERE id = ?", (record.id,)).fetchone()
        db.execute(
            "INSERT INTO images (id, created, size, kind, parents) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET size = excluded.size, kind = excluded.kind, "
            "parents = excluded.parents",
            (record.id, created_seconds(record), size, record.kind, " ".join(record.parents)),
        )
        db.executemany(
            "INSERT OR IGNORE INTO parents (parent, child) VALUES (?, ?)",
            [(parent, record.id) for parent in set(record.parents)],
        )
        for digest in {record.raw_sha256, raw_sha256} - {None}:
            db.execute("INSERT OR IGNORE INTO raw (sha256, id) VALUES (?, ?)", (digest, record.id))
        delta = size - (int(old[0]) if old is not None else 0)
        db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key = 'total'", (delta,))

    def note_raw(self, raw_sha256: str, image_id: str) -> None:
        """Remember that the client bytes hashing to ``raw_sha256`` are stored as ``image_id``."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO raw (sha256, id) VALUES (?, ?)", (raw_sha256, image_id))

    def remove(self, image_id: str) -> None:
        with self.transaction() as db:
            old = db.execute("SELECT size FROM images WHERE id = ?", (image_id,)).fetchone()
            if old is None:
                return
            db.execute("DELETE FROM images WHERE id = ?", (image_id,))
            db.execute("DELETE FROM parents WHERE child = ?", (image_id,))
            db.execute("DELETE FROM raw WHERE id = ?", (image_id,))
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) - ? WHERE key = 'total'", (old[0],))

    def rebuild(self, entries: Iterable[tuple[ImageRecord, int]]) -> int:
        """Replace the index with ``entries`` (records and their sizes) in one transaction, and mark
        it complete; returns how many. Pending rows are kept (other processes' writes in flight)."""
        with self.transaction() as db:
            for table in ("images", "parents", "raw"):
                db.execute(f"DELETE FROM {table}")  # constant table names
            db.execute("UPDATE meta SET value = '0' WHERE key = 'total'")
            count = 0
            for record, size in entries:
                self._add(db, record, size, None)
                count += 1
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('complete', '1')")
        return count

    # --- reads ----------------------------------------------------------------------------------

    def find_raw(self, raw_sha256: str) -> str | None:
        row = self._one("SELECT id FROM raw WHERE sha256 = ?", (raw_sha256,))
        return str(row[0]) if row is not None else None

    def size(self, image_id: str) -> int | None:
        row = self._one("SELECT size FROM images WHERE id = ?", (image_id,))
        return int(str(row[0])) if row is not None else None

    def newest(self, limit: int) -> list[str]:
        """Ids of the ``limit`` newest images, newest first (of two in the same second, the later
        written first)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM images ORDER BY created DESC, seq DESC LIMIT ?", (limit,))
            return [str(row[0]) for row in rows]

    def oldest_created(self) -> float | None:
        row = self._one("SELECT MIN(created) FROM images")
        return float(str(row[0])) if row is not None and row[0] is not None else None

    def oldest(self, batch: int = 256) -> Iterator[tuple[str, Entry]]:
        """Every image, oldest first, read ``batch`` rows at a time (stop early: the rest is not read)."""
        after: tuple[float, int] = (float("-inf"), -1)
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT created, seq, id, size, parents FROM images WHERE (created, seq) > (?, ?) "
                    "ORDER BY created, seq LIMIT ?",
                    (*after, batch),
                ).fetchall()
            for created, seq, image_id, size, parents in rows:
                yield str(image_id), Entry(float(created), int(size), tuple(str(parents).split()))
                after = (float(created), int(seq))
            if len(rows) < batch:
                return

    def children(self, image_id: str) -> int:
        """How many indexed images name ``image_id`` among their parents."""
        row = self._one("SELECT COUNT(*) FROM parents WHERE parent = ?", (image_id,))
        return int(str(row[0])) if row is not None else 0
