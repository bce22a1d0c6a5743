"""What flushing images to disk costs: ``server.store_fsync`` on vs off, on the tiny profile.

Measures (1) ``ImageStore.put`` of a 64x64 generated image and (2) a whole tiny ``generate_image``
call through an in-process MCP client, alternating the two settings on the same disk.

    python bench/store_fsync.py [--puts 200] [--calls 20] [--dir /path/on/the/disk/to/test]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np
from mcp import Client
from PIL import Image

from multimodal_mcp.backends.tiny import ensure_tiny_models
from multimodal_mcp.config import load_config
from multimodal_mcp.imaging.store import ImageStore
from multimodal_mcp.pool.devices import Device, GiB
from multimodal_mcp.server.app import build_server, create_services


def time_puts(root: Path, n: int, fsync: bool) -> list[float]:
    store = ImageStore(root, fsync=fsync)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        t = time.perf_counter()
        store.put(image, kind="generated", prompt="bench", seed=i)
        out.append(time.perf_counter() - t)
    return out


async def time_calls(root: Path, tiny: Path, n: int, fsync: bool) -> list[float]:
    config = load_config(
        profile="tiny",
        cache_dir=root,
        home=root,
        overrides={"store_dir": root / f"store-{fsync}", "tiny_dir": tiny, "store_fsync": fsync},
    )
    cpu = Device("cpu", "cpu", "cpu", 8 * GiB, 8 * GiB)
    out = []
    async with Client(build_server(config, create_services(config, [cpu]))) as client:
        await client.call_tool("generate_image", {"prompt": "warm", "seed": 0})
        for i in range(n):
            t = time.perf_counter()
            result = await client.call_tool("generate_image", {"prompt": "bench", "seed": 1000 + i})
            out.append(time.perf_counter() - t)
            assert not result.is_error
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=200)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--dir", type=Path, help="a directory on the disk to measure (default: the temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        tiny = ensure_tiny_models(root / "tiny")
        print(f"store on {root}")
        for label, fn in (
            ("ImageStore.put, 64x64", lambda f: time_puts(root / f"puts-{f}", args.puts, f)),
            ("generate_image call, tiny", lambda f: anyio.run(time_calls, root, tiny, args.calls, f)),
        ):
            off, on = fn(False), fn(True)
            m_off, m_on = statistics.median(off) * 1000, statistics.median(on) * 1000
            print(
                f"{label:<28} median fsync off {m_off:8.2f} ms   on {m_on:8.2f} ms   (+{m_on - m_off:.2f} ms)"
            )


if __name__ == "__main__":
    main()
