"""bench/table.py, the runner of ``make bench``: it runs the scripts and prints one table, asserting
no timing (the ratios of a smoke run mean nothing; the table says so)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_the_table_runner_runs_a_script_records_its_ratio_and_shows_a_missing_script(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "table.py"),
            "--smoke",
            "--only",
            "previews",
            "--only",
            "store scaling",
            "--logs",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "mode: smoke" in lines[0]
    assert lines[1].split()[:2] == ["benchmark", "measured"]
    preview = next(line for line in lines if line.startswith("previews:"))
    assert "a WebP preview" in preview and "<= 1.0x" in preview
    store = next(line for line in lines if line.startswith("store scaling: store opening"))
    assert "the same at 200 images" in store and "<= 1.1x" in store
    assert re.search(r"\s\d+\.\d\dx\s", store)  # the ratio measured in this run
    assert (tmp_path / "previews.log").is_file()


def test_a_missing_script_is_not_available_and_verdicts_follow_the_target(tmp_path: Path) -> None:
    import importlib.util
    import os

    environ = dict(os.environ)  # bench/_common sets offline and OpenMP variables at import
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_table", BENCH / "table.py")
        assert spec is not None and spec.loader is not None
        table = importlib.util.module_from_spec(spec)
        sys.modules["bench_table"] = table  # its dataclass looks its module up there
        spec.loader.exec_module(table)
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("bench_table", None)
        os.environ.clear()
        os.environ.update(environ)
    rows, status, seconds = table.run(
        table.Benchmark("absent", "no_such_script.py", (), ()), smoke=True, logs=tmp_path
    )
    assert rows == [] and status.startswith("not available") and seconds == 0.0
    assert table.verdict({"value": 2.5, "target": 2.0, "higher_is_better": True}) == "pass"
    assert table.verdict({"value": 1.6, "target": 1.5}) == "FAIL"
    assert table.verdict({"value": 1.0, "target": None}) == "info"
