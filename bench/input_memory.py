"""Input memory: peak and retained server memory for the inputs that used to cost far more than their
size (a thin strip, large photos one after another, large photos at once).

The real server runs as a subprocess (tiny profile, stdio MCP session, as an agent host starts it);
its resident memory is read from ``/proc/<pid>/status`` (``VmRSS`` now, ``VmHWM`` the peak) before
and after each case. Cases, each against its alternative in the same run:

- **thin**: ``clip_classify`` on a 1x100,000 PNG (475 bytes; refused at its header now) and on the
  thinnest strip the limits accept (32:1), against the CLIP image processor's own cost for that
  strip in this process without the server's fitting (the short side scaled up to 224 first).
- **large, one by one**: N ``clip_classify`` calls, each with its own ~40-megapixel JPEG (decoded at
  the scale CLIP needs), then N tagged Display P3 ones (staged: decoded at that scale and converted;
  the store converts them whole in the background afterwards, one at a time); memory retained
  afterwards against before, the peak including the background conversions.
- **large, at once**: N Display P3 WebPs (decoded whole, as a PNG or WebP to convert is) in concurrent
  calls, with the default decode budget against a server whose budget is effectively unlimited
  (``[server.limits] decode_memory_mib = 65536``).

After each case the benchmark waits until the server's CPU time stops growing (its background
conversions done) before it reads the memory.

    python bench/input_memory.py            # 8 large inputs (about 2 minutes on 2 CPU cores)
    python bench/input_memory.py --quick    # 4 large inputs, 20 megapixels each
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tracemalloc
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import anyio
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_CACHE,
    display_p3_profile,
    print_header,
    server_parameters,
    table,
    temp_dir,
    write_config,
)

MIB = 2**20


def _children() -> set[int]:
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry.name))
    return found


def _memory(pid: int) -> tuple[int, int]:
    """(resident, peak resident) bytes of ``pid``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def _reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    with suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _jpeg(megapixels: float, seed: int, icc_profile: bytes | None = None, fmt: str = "JPEG") -> bytes:
    from PIL import Image
    from skimage import data

    side = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    base = Image.fromarray(data.astronaut()).resize((side, side * 3 // 4))
    noise = np.random.default_rng(seed).integers(0, 24, (side * 3 // 4, side, 3), dtype=np.uint8)
    noisy = Image.fromarray(np.asarray(base, dtype=np.uint8) // 2 + noise)
    buf = io.BytesIO()
    noisy.save(buf, format=fmt, quality=85, **({"icc_profile": icc_profile} if icc_profile else {}))
    return buf.getvalue()


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _processor_cost_without_fitting(width: int, height: int) -> int:
    """Peak bytes Python allocates when the CLIP image processor (224 px) takes the strip as it is."""
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    strip = Image.new("RGB", (width, height), (128, 128, 128))
    tracemalloc.start()
    processor(images=[strip], return_tensors="np")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


class Server:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.pid = 0

    async def __aenter__(self) -> Any:
        from mcp import ClientSession
        from mcp.client.stdio import stdio_client

        self._stack = AsyncExitStack()
        before = _children()
        read, write = await self._stack.enter_async_context(stdio_client(server_parameters(self.config)))
        session = await self._stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        (self.pid,) = _children() - before
        self.session = session
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self._stack.aclose()

    def memory(self) -> tuple[int, int]:
        return _memory(self.pid)


async def _classify(server: Server, image: str) -> str:
    """``ok``, or the start of the error; a call that outlasts the server's wait is followed as a job."""
    result = await server.session.call_tool("clip_classify", {"image": image, "labels": ["a", "b"]})
    content = result.structured_content or {}
    while not result.is_error and content.get("job", {}).get("status") == "running":
        job = content["job"]["id"]
        result = await server.session.call_tool("get_job", {"job_id": job, "wait_seconds": 30})
        content = result.structured_content or {}
    if result.is_error:
        return " ".join(getattr(b, "text", "") for b in result.content)[:60]
    status = content.get("job", {}).get("status", "done")
    return "ok" if status == "done" else f"job {status}: {content['job'].get('error')}"[:60]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--count", type=int, default=None, help="large inputs per case")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args()
    count = args.count or (4 if args.quick else 8)
    megapixels = 20 if args.quick else 38
    print_header("input memory: peak and retained server memory by kind of input")

    print(f"building {2 * count} JPEGs and {count} WebPs of {megapixels} megapixels ...", file=sys.stderr)
    plain = [_uri(_jpeg(megapixels, seed), "image/jpeg") for seed in range(count)]
    # Photos in Display P3 (as iPhones tag them): their colour is converted to sRGB, so their bytes
    # are staged and converted in the background; a WebP is decoded whole for the call too.
    p3 = display_p3_profile()
    converted = [_uri(_jpeg(megapixels, seed, p3), "image/jpeg") for seed in range(count, 2 * count)]
    whole = [_uri(_jpeg(megapixels, seed, p3, "WEBP"), "image/webp") for seed in range(2 * count, 3 * count)]
    rows: list[list[Any]] = []
    peaks: dict[str, int] = {}
    with temp_dir("mmcp-bench-memory") as tmp:

        def config(name: str, **extra: Any) -> Path:
            return write_config(
                tmp / f"{name}.toml",
                store_dir=tmp / f"store-{name}",
                tiny_dir=args.cache_dir / "tiny",
                models={},
                defaults={"clip": "tiny-clip"},
                limits={"max_input_bytes": 64 * MIB, **extra},
            )

        async with Server(config("default")) as server:
            await _classify(server, _uri(_png(64, 64), "image/png"))  # load the model first
            base, _ = server.memory()
            thin = _png(1, 100_000)
            rows.append(
                await _case(server, "thin 1x100000 PNG", f"{len(thin)} B", [_uri(thin, "image/png")], base)
            )
            accepted = (313, 10_000)
            rows.append(
                await _case(
                    server, "thin 313x10000 PNG (32:1)", "", [_uri(_png(*accepted), "image/png")], base
                )
            )
            unfitted = _processor_cost_without_fitting(*accepted)
            rows.append(
                ["  CLIP processor alone, unfitted", "", f"{unfitted / MIB:+.0f} (Python heap)", "", ""]
            )
            size = f"{len(plain[0]) * 3 // 4 / MIB:.1f} MiB each"
            rows.append(
                await _case(server, f"{count} x {megapixels} Mpx JPEG, one by one", size, plain, None)
            )
            rows.append(await _case(server, f"{count} x Display P3 JPEG, one by one", size, converted, None))
            webp_size = f"{len(whole[0]) * 3 // 4 / MIB:.1f} MiB each"
            row = await _case(
                server, f"{count} x Display P3 WebP at once", webp_size, whole, None, together=True
            )
            peaks["budget"] = row.pop()
            rows.append(row)

        limits = {"decode_memory_mib": 65536}
        async with Server(config("unbounded", **limits)) as server:
            await _classify(server, _uri(_png(64, 64), "image/png"))
            row = await _case(server, "  the same, no decode budget", "", whole, None, together=True)
            peaks["none"] = row.pop()
            rows.append(row)

    print(table(["case", "input", "peak MiB", "retained MiB", "outcome"], rows))
    print()
    ratio = peaks["budget"] / max(peaks["none"], 1)
    print(f"Display P3 WebPs at once, peak with the decode budget / without: {ratio:.2f}")
    print("targets: the thin strip refused at its header with no peak; memory retained after the large")
    print("inputs within a few tens of MiB of before; the concurrent peak lowered by the decode budget.")


async def _case(
    server: Server, name: str, size: str, images: list[str], base: int | None, *, together: bool = False
) -> list[Any]:
    """One row: peak and retained memory over ``images`` sent one by one (or all at once) against
    the memory before the case (or ``base``)."""
    before, _ = server.memory()
    _reset_peak(server.pid)
    outcomes: list[str] = []
    if together:
        async with anyio.create_task_group() as tg:
            for image in images:
                tg.start_soon(_concurrent, server, image, outcomes)
    else:
        for image in images:
            outcomes.append(await _classify(server, image))
    await anyio.sleep(1)  # the trim after a large call runs in the background
    await _until_idle(server.pid)  # and the store's conversions of staged inputs
    rss, peak = server.memory()
    start = before if base is None else base
    row: list[Any] = [
        name,
        size,
        f"{(peak - start) / MIB:+.0f}",
        f"{(rss - start) / MIB:+.0f}",
        _summary(outcomes),
    ]
    return [*row, peak - start] if together else row


async def _until_idle(pid: int, quiet_seconds: float = 1.5) -> None:
    """Return once the process has used no CPU time for ``quiet_seconds`` (from /proc/<pid>/stat)."""

    def cpu_ticks() -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    last = cpu_ticks()
    while True:
        await anyio.sleep(quiet_seconds)
        now = cpu_ticks()
        if now - last <= 1:
            return
        last = now


async def _concurrent(server: Server, image: str, outcomes: list[str]) -> None:
    outcomes.append(await _classify(server, image))


def _summary(outcomes: list[str]) -> str:
    return ", ".join(f"{outcomes.count(o)} {o[:60]}" for o in dict.fromkeys(outcomes))


if __name__ == "__main__":
    anyio.run(main)
