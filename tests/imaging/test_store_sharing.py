"""Issue 13, item 4: one store, several processes. Opening a store never removes another live
process's in-flight files; what is provably stale still goes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from multimodal_mcp.imaging.sharing import STALE_SECONDS, temp_prefix
from multimodal_mcp.imaging.store import ImageStore

from helpers import photo

HOLD_OPEN = (
    "import sys; from pathlib import Path; from multimodal_mcp.imaging.store import ImageStore; "
    "store = ImageStore(Path(sys.argv[1])); print('open', flush=True); sys.stdin.readline()"
)


def _other_process(root: Path) -> subprocess.Popen[str]:
    """A second real process with the store open, until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "open\n"
    return process


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(done.stdout)


def test_recovering_a_store_another_process_uses_keeps_its_in_flight_files_and_removes_the_stale(
    tmp_path: Path,
) -> None:
    kept = ImageStore(tmp_path).put(photo("coffee", 16), kind="input")
    folder = tmp_path / kept.id[:2]
    other = _other_process(tmp_path)
    try:
        writing = (
            folder / f"{temp_prefix(kept.id + '.png').replace(f'p{os.getpid()}', f'p{other.pid}')}ab.tmp"
        )
        writing.write_bytes(b"\x89PNG half")  # the other process is between mkstemp and rename
        renamed = folder / "00000000000000ff.png"  # ... or between its image's rename and its record's
        renamed.write_bytes(b"\x89PNG")
        crashed = folder / f".{kept.id}.json.p{_dead_pid()}.cd.tmp"  # a writer that died
        crashed.write_bytes(b"{half")
        ancient = folder / f".{kept.id}.json.x1y2.tmp"  # an old-style name, untouched for long
        ancient.write_bytes(b"{half")
        old = time.time() - STALE_SECONDS - 60
        os.utime(ancient, (old, old))

        opened = ImageStore(tmp_path)
        opened.recover()  # the full scan (opening reads only the pending writes: the test below)
        assert writing.exists() and renamed.exists()  # the live process's files stay
        assert not crashed.exists() and not ancient.exists()
        assert opened.exists(kept.id)
        del opened
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=60)
    # The other process has gone: alone, recovery cleans up everything, as a single process would.
    reopened = ImageStore(tmp_path)
    reopened.recover()
    assert reopened.exists(kept.id) and not writing.exists() and not renamed.exists()


def test_temporary_files_name_the_process_that_writes_them() -> None:
    assert temp_prefix("abc.png") == f".abc.png.p{os.getpid()}."


def test_opening_a_store_leaves_a_live_process_s_pending_write_and_settles_a_dead_one_s(
    tmp_path: Path,
) -> None:
    ImageStore(tmp_path).put(photo("coffee", 16), kind="input")
    other = _other_process(tmp_path)
    try:
        index = ImageStore(tmp_path).index
        live, dead = "00000000000000aa", "00000000000000bb"
        with index.transaction() as db:  # two writes marked pending, as commit marks them
            for image_id, pid in ((live, other.pid), (dead, _dead_pid())):
                db.execute("INSERT INTO pending VALUES (?, 'png', ?, ?)", (image_id, pid, time.time()))
        for image_id in (live, dead):
            (tmp_path / "00" / f"{image_id}.png").parent.mkdir(exist_ok=True)
            (tmp_path / "00" / f"{image_id}.png").write_bytes(b"\x89PNG")  # its image, no record yet
        ImageStore(tmp_path)
        assert [row[0] for row in index.pending()] == [live]
        assert (tmp_path / "00" / f"{live}.png").exists() and not (tmp_path / "00" / f"{dead}.png").exists()
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=60)
    ImageStore(tmp_path)  # alone now: the other's pending write is settled too
    assert index.pending() == [] and not (tmp_path / "00" / f"{live}.png").exists()
