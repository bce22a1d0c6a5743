"""Cost flat in the store's size (issue 20, item 2): opening an image store, looking an image up and
reading it, with 50,000 stored images against 1,000, in the same run.

Each store is built by writing synthesized records and 1x1 PNGs in the store's layout, which is
what a store written before the index existed looks like; its first opening reads every file once
to build the index (timed: that scan, plus the index's inserts, is about what every opening cost
before the index). Then, alternating the two stores, each is opened ``--repeats`` times (``ImageStore``
with the default ``[server.store]`` retention, so the retention check at opening is included), and
``--lookups`` random ids are looked up (``record``) and read (``read_bytes``) on a fresh store.

    python bench/store_scaling.py [--quick] [--large 50000] [--small 1000] [--dir /path]

The last line is ``RATIO store_open_50k_vs_1k <median open at large / median open at small>``
(target at most 1.10), for ``make bench``'s table; ``--quick`` builds 10,000 images instead of 50,000
(building takes most of the run) and names its line ``store_open_10k_vs_1k``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import record_ratio
from PIL import Image

from multimodal_mcp.config import StoreSettings
from multimodal_mcp.imaging.records import ImageRecord, image_key, record_key
from multimodal_mcp.imaging.store import ImageStore


def build(root: Path, count: int) -> list[str]:
    """``count`` distinct 1x1 PNGs and their records under ``root``, in the store's layout, as a
    store written before the index existed (plain file writes: this is set-up, not measured)."""
    created = datetime.now(UTC).isoformat(timespec="seconds")
    ids = []
    for i in range(count):
        buf = io.BytesIO()
        Image.new("RGB", (1, 1), (i % 256, (i // 256) % 256, i // 65536)).save(buf, format="PNG")
        data = buf.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        record = ImageRecord(
            id=digest[:16], kind="generated", width=1, height=1, created=created, sha256=digest, seed=i
        )
        folder = root / record.id[:2]
        folder.mkdir(parents=True, exist_ok=True)
        (root / image_key(record.id, "png")).write_bytes(data)
        (root / record_key(record.id)).write_bytes(record.dump())
        ids.append(record.id)
    return ids


def open_once(root: Path) -> float:
    gc.collect()
    start = time.perf_counter()
    store = ImageStore(root, fsync=False, retention=StoreSettings())
    elapsed = time.perf_counter() - start
    store.index.close()
    return elapsed


def lookups(root: Path, ids: list[str], n: int, rng: random.Random) -> tuple[float, float]:
    """Seconds per ``record`` and per ``read_bytes`` of random ids (median of ``n``)."""
    store = ImageStore(root, fsync=False)
    picks = [rng.choice(ids) for _ in range(n)]
    looked, read = [], []
    for image_id in picks:
        t0 = time.perf_counter()
        store.record(image_id)
        t1 = time.perf_counter()
        store.read_bytes(image_id)
        t2 = time.perf_counter()
        looked.append(t1 - t0)
        read.append(t2 - t1)
    store.index.close()
    return statistics.median(looked), statistics.median(read)


def _count(n: int) -> str:
    """50000 -> '50k', 200 -> '200': the sizes in a RATIO line's name."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and lookups (make bench)")
    parser.add_argument(
        "--large", type=int, default=None, help="images in the large store (50,000; quick 10,000)"
    )
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=None, help="openings of each (51; quick 31)")
    parser.add_argument("--lookups", type=int, default=None, help="ids looked up (2000; quick 300)")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the stores")
    args = parser.parse_args()
    repeats = args.repeats or (31 if args.quick else 51)  # an opening takes about 1 ms
    args.large = args.large or (10_000 if args.quick else 50_000)
    n_lookups = args.lookups or (300 if args.quick else 2000)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        roots = {size: Path(tmp) / f"store-{size}" for size in (args.small, args.large)}
        ids, scans = {}, {}
        for size, root in roots.items():
            t = time.perf_counter()
            ids[size] = build(root, size)
            built = time.perf_counter() - t
            scans[size] = open_once(root)  # no index yet: one scan of every file builds it
            scan_ms = scans[size] * 1000
            print(f"built {size} images in {built:.1f} s; first opening (the scan) {scan_ms:.1f} ms")
        opens: dict[int, list[float]] = {size: [] for size in roots}
        for _ in range(repeats):  # alternate, so both see the same machine load
            for size, root in roots.items():
                opens[size].append(open_once(root))
        rng = random.Random(0)
        reads = {size: lookups(root, ids[size], n_lookups, rng) for size, root in roots.items()}
    small, large = args.small, args.large
    med = {size: statistics.median(times) for size, times in opens.items()}
    print(f"\n{'':34}{small:>12,}{large:>12,}   ratio")
    rows = [
        ("first opening: scan, builds index", scans[small], scans[large]),
        ("opening, indexed (median)", med[small], med[large]),
        ("record(id) (median)", reads[small][0], reads[large][0]),
        ("read_bytes(id) (median)", reads[small][1], reads[large][1]),
    ]
    for name, a, b in rows:
        print(f"{name:34}{a * 1000:>10.3f}ms{b * 1000:>10.3f}ms  {b / a:6.2f}x")
    print(f"target: indexed opening at {large:,} within 10% of {small:,} (ratio <= 1.10)")
    sizes = f"{_count(large)}_vs_{_count(small)}"  # 50k_vs_1k by default, 10k_vs_1k with --quick
    print(f"RATIO store_lookup_{sizes} {reads[large][0] / reads[small][0]:.3f}")
    print(f"RATIO store_read_{sizes} {reads[large][1] / reads[small][1]:.3f}")
    print(f"RATIO store_open_{sizes} {med[large] / med[small]:.3f}")
    versus = f"the same at {small:,} images"
    record_ratio(f"store opening, {large:,} images", med[large] / med[small], alternative=versus, target=1.10)
    record_ratio(
        f"store record(id), {large:,} images",
        reads[large][0] / reads[small][0],
        alternative=versus,
        target=1.10,
    )
    record_ratio(
        f"store read_bytes(id), {large:,} images",
        reads[large][1] / reads[small][1],
        alternative=versus,
        target=1.10,
    )


if __name__ == "__main__":
    main()
