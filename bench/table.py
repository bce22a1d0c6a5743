"""Every benchmark in a short mode, and one table of the ratios they measured (``make bench``).

Each script runs as a subprocess with ``MMCP_BENCH_RESULTS`` naming a file it appends its ratios to
(``_common.record_ratio``): the ratio, what it was measured against in the same run, and its target.
The table shows, per ratio: the benchmark, the measured ratio, the alternative, the target and
pass/FAIL. A script that is missing shows as "not available"; one that fails, as "error" (its
output is kept, and the runner exits with status 1). A ratio missing its target is never a failed
run: the table reports it, nothing asserts it.

    python bench/table.py              # each script's --quick mode (about 6 minutes on 2 CPU cores)
    python bench/table.py --smoke      # the least work each script can do: checks they run, no timing
    python bench/table.py --markdown   # the table as Markdown (for the README)
    python bench/table.py --only start-up --only previews

To add a benchmark: one line in BENCHMARKS, and ``record_ratio`` calls in the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS_ENV, cpu_model, table

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Benchmark:
    label: str
    script: str
    quick: tuple[str, ...]
    smoke: tuple[str, ...]
    timeout_s: int = 900


BENCHMARKS = [
    Benchmark("CLIP batching", "clip_throughput.py", ("--quick",), ("--requests", "4", "--rounds", "1")),
    Benchmark(
        "tool vs direct generation",
        "generate_overhead.py",
        ("--quick",),
        ("--size", "64", "--steps", "2", "--runs", "1"),
    ),
    Benchmark("image input path", "input_path.py", ("--quick",), ("--rounds", "1")),
    Benchmark(
        "store scaling",
        "store_scaling.py",
        ("--quick",),
        ("--large", "2000", "--small", "200", "--repeats", "5", "--lookups", "50"),
    ),
    Benchmark("start-up", "startup.py", ("--quick",), ("--rounds", "1")),
    Benchmark("compare_images vs scikit-image", "compare_images.py", ("--quick",), ("--rounds", "1")),
    Benchmark("previews", "previews.py", ("--quick",), ("--rounds", "1")),
]


def run(bench: Benchmark, *, smoke: bool, logs: Path) -> tuple[list[dict[str, object]], str, float]:
    """(the ratios it recorded, its status, seconds)."""
    script = HERE / bench.script
    if not script.is_file():
        return [], f"not available (bench/{bench.script} is missing)", 0.0
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as results:
        results_path = Path(results.name)
    log = logs / f"{script.stem}.log"
    started = time.perf_counter()
    print(f"running bench/{bench.script} ... (output: {log})", file=sys.stderr, flush=True)
    try:
        with log.open("w") as out:
            done = subprocess.run(
                [sys.executable, str(script), *(bench.smoke if smoke else bench.quick)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, RESULTS_ENV: str(results_path)},
                timeout=bench.timeout_s,
                check=False,
            )
        status = "ok" if done.returncode == 0 else f"error (exit {done.returncode}; see {log})"
    except subprocess.TimeoutExpired:
        status = f"error (over {bench.timeout_s} s; see {log})"
    elapsed = time.perf_counter() - started
    rows = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    results_path.unlink(missing_ok=True)
    if status == "ok" and not rows:
        status = "error (no ratio recorded)"
    return rows, status, elapsed


def verdict(row: dict[str, object]) -> str:
    target = row.get("target")
    if target is None:
        return "info"
    value, bound = float(row["value"]), float(target)  # type: ignore[arg-type]
    ok = value >= bound if row.get("higher_is_better") else value <= bound
    return "pass" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="the least work per script (ratios not meaningful)"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--only", action="append", default=[], help="benchmarks whose label contains this")
    parser.add_argument("--logs", type=Path, help="where each script's output goes (default: a temp dir)")
    args = parser.parse_args()
    chosen = [b for b in BENCHMARKS if not args.only or any(o.lower() in b.label.lower() for o in args.only)]
    logs = args.logs or Path(tempfile.mkdtemp(prefix="mmcp-bench-logs-"))
    logs.mkdir(parents=True, exist_ok=True)

    headers = ["benchmark", "measured", "against (same run)", "target", "result"]
    rows: list[list[str]] = []
    failed = False
    total = time.perf_counter()
    for bench in chosen:
        recorded, status, _ = run(bench, smoke=args.smoke, logs=logs)
        failed |= status.startswith("error")
        if not recorded:
            rows.append([bench.label, "-", "-", "-", status])
            continue
        for row in recorded:
            target = row.get("target")
            sign = ">=" if row.get("higher_is_better") else "<="
            note = f" ({row['note']})" if row.get("note") else ""
            rows.append(
                [
                    f"{bench.label}: {row['name']}",
                    f"{float(row['value']):.2f}x{note}",  # type: ignore[arg-type]
                    str(row["alternative"]),
                    f"{sign} {target}x" if target is not None else "-",
                    status if status != "ok" else ("not judged" if args.smoke else verdict(row)),
                ]
            )
    mode = "smoke (the least work per script: the ratios are not meaningful)" if args.smoke else "quick"
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical cores; mode: {mode}; "
          f"{time.perf_counter() - total:.0f} s")  # fmt: skip
    if args.markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "---|" * len(headers))
        for row in rows:
            print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    else:
        print(table(headers, rows))
    print(f"(each script's output: {logs})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
