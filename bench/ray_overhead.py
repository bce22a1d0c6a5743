"""The Ray Serve engine's per-call overhead: the same MCP tool calls through Serve and in one process.

Two servers run side by side in this process, each behind an in-memory MCP client session
(``mcp.Client``): one with today's in-process pool (``--engine local``) and one whose local models
run in Ray Serve deployments on a local single-node cluster on loopback (``--engine ray``; the
front calls the replicas through deployment handles, streaming progress). The calls alternate
(local, ray, ray, local, ...) so both share the machine's noise; each side's median of ``--runs``
calls and the ratio ray/local are printed for

- ``clip_classify`` of a 64x64 image over 4 labels with the tiny CLIP (a call of a few ms: what the
  two process hops and the serialisation cost shows here), and
- ``generate_image`` with the tiny SD 1.5 at ``--size`` px and ``--steps`` steps, chosen to take
  about one second in process (target: ratio at most 1.03).

"in the replica" is the median time the same Serve calls spent inside the replica (its own record
of each call's start and end): the difference to "through Serve" is what the hops cost.

    python bench/ray_overhead.py [--runs 15] [--steps 48] [--size 128]
    OMP_NUM_THREADS=1 python bench/ray_overhead.py --runs 21 --steps 75   # one torch thread per side

Torch threads: as many as the machine has CPUs unless ``OMP_NUM_THREADS`` says otherwise. On the
2-vCPU VM, with 2 threads the replica's own denoising took 8% longer than the same denoising in the
front (1464 vs 1349 ms); with 1 thread, 1-2% (959 vs 951 ms). A parallel step waits for its slowest
thread, and threads that fill every core share them with the Ray processes and threads that are
busy while a call streams (the likely cause; not isolated further). With one thread per side the
ratio shows the engine's own cost on such a machine.
    python bench/ray_overhead.py --throughput [--calls 8]

``--throughput`` measures instead how many ``generate_image`` calls per second the engine serves
with one and with two replicas of the tiny SD 1.5, on a simulated two-node cluster (two Ray nodes
on this machine, one CPU each; a replica takes one CPU, so two replicas land on the two nodes):
``--calls`` concurrent calls, after a warm-up that loads the model in every replica.

Needs the ``ray`` extra. The cluster is started with 2 CPUs, a 150 MB object store and no dashboard,
and shut down at the end.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

# Ray sets OMP_NUM_THREADS to a replica's num_cpus (1 for 0) unless it is set: set it here, before
# torch is imported, so the replicas (which inherit this environment) and the in-process pool run
# torch with the same number of threads.
os.environ.setdefault(
    "OMP_NUM_THREADS",
    str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1),
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, print_header, table

from multimodal_mcp.config import load_config

LABELS = ["a red square", "a blue circle", "a cat", "a lighthouse"]


def _png(color: str) -> str:
    import base64

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def _timed(client: Any, tool: str, arguments: dict[str, Any]) -> float:
    started = time.perf_counter()
    result = await client.call_tool(tool, arguments)
    elapsed = time.perf_counter() - started
    if result.is_error:
        raise SystemExit(f"{tool} failed: {result.content}")
    return elapsed


async def _measure(args: argparse.Namespace, config: Any, engine: Any) -> list[list[Any]]:
    from mcp import Client

    from multimodal_mcp.server.app import build_server, create_services

    local = create_services(config)
    ray = create_services(config, engine=engine)
    calls = {
        "clip_classify": {"image": _png("red"), "labels": LABELS},
        "generate_image": {
            "prompt": "a lighthouse on a rocky coast at dusk",
            "width": args.size,
            "height": args.size,
            "steps": args.steps,
            "seed": 1234,
        },
    }
    rows = []
    async with Client(build_server(config, local)) as near, Client(build_server(config, ray)) as far:
        for tool, arguments in calls.items():
            for client in (near, far):  # warm: models loaded, label embeddings cached
                await _timed(client, tool, arguments)
                await _timed(client, tool, arguments)
            times: dict[str, list[float]] = {"local": [], "ray": []}
            for run in range(args.runs):
                order = [("local", near), ("ray", far)] if run % 2 == 0 else [("ray", far), ("local", near)]
                for side, client in order:
                    times[side].append(await _timed(client, tool, arguments))
            near_s, far_s = median(times["local"]), median(times["ray"])
            rows.append(
                [
                    tool,
                    f"{near_s * 1000:.1f} ms",
                    f"{far_s * 1000:.1f} ms",
                    f"{(far_s - near_s) * 1000:+.1f} ms",
                    f"{far_s / near_s:.3f}",
                    f"{median(await _replica_seconds(engine, tool, args.runs)) * 1000:.1f} ms",
                ]
            )
    return rows


async def _replica_seconds(engine: Any, tool: str, runs: int) -> list[float]:
    """How long the last ``runs`` calls of ``tool``'s model took inside its replica (start to end as
    the replica records them): what is left of the front's figure is the hops."""
    from ray import serve

    from multimodal_mcp.cluster.engine import app_name

    model = "tiny-clip" if tool == "clip_classify" else "tiny-sd15"
    family = engine.where[model]
    handle = serve.get_deployment_handle(family, app_name=app_name(engine.settings, family))
    events = await handle.recent.remote()
    starts = {e[1]: e[-1] for e in events if e[0] == "start" and e[2] == model}
    ends = [(e[1], e[-1]) for e in events if e[0] == "end" and e[1] in starts]
    return [end - starts[call] for call, end in ends[-runs:]]


async def _throughput(args: argparse.Namespace, config: Any, engine: Any) -> float:
    from mcp import Client

    from multimodal_mcp.server.app import build_server, create_services

    arguments = {"prompt": "a lighthouse", "width": args.size, "height": args.size, "steps": args.steps}
    async with Client(build_server(config, create_services(config, engine=engine))) as client:

        async def one(seed: int) -> None:
            await _timed(client, "generate_image", {**arguments, "seed": seed})

        async with anyio.create_task_group() as tg:  # warm: every replica loads the model
            for seed in range(4):
                tg.start_soon(one, seed)
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for seed in range(args.calls):
                tg.start_soon(one, 100 + seed)
        return args.calls / (time.perf_counter() - started)


def throughput(args: argparse.Namespace, config: Any) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from multimodal_mcp.cluster.engine import RayEngine
    from multimodal_mcp.cluster.settings import FamilySettings, RaySettings

    os.environ["OMP_NUM_THREADS"] = "1"  # one CPU per replica: one torch thread (the nodes inherit it)
    node = {"num_cpus": 1, "node_ip_address": "127.0.0.2", "object_store_memory": 100 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    cluster.add_node(**node)
    ray.init(address=cluster.address, log_to_driver=False)
    rows = []
    try:
        for replicas in (1, 2):
            family = FamilySettings(num_replicas=replicas, num_cpus=1, max_queued_requests=64)
            settings = RaySettings(only=frozenset({"tiny-sd15"}), families={"tiny-sd15": family})
            engine = RayEngine(config, settings)
            engine.start()  # deploys, or redeploys with the new replica count
            rate = anyio.run(_throughput, args, config, engine)
            rows.append(
                [str(replicas), f"{rate:.2f}", f"{args.calls} concurrent, {args.size} px, {args.steps} steps"]
            )
    finally:
        ray.shutdown()
        cluster.shutdown()
    base = float(rows[0][1])
    for row in rows:
        row.insert(2, f"{float(row[1]) / base:.2f}x")
    print(table(["replicas", "calls/s", "vs one", "calls"], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed calls per side and tool")
    parser.add_argument("--steps", type=int, default=48, help="generate_image steps (about 1 s in process)")
    parser.add_argument("--size", type=int, default=128, help="generate_image width and height, px")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "multimodal-mcp-bench-cache"
    )
    parser.add_argument("--throughput", action="store_true", help="calls/s with one and two replicas")
    parser.add_argument("--calls", type=int, default=8, help="--throughput: concurrent generate_image calls")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from multimodal_mcp.backends.tiny import ensure_tiny_models
    from multimodal_mcp.cluster.engine import RayEngine
    from multimodal_mcp.cluster.settings import RaySettings

    print_header("Ray Serve engine overhead: the same MCP calls through Serve and in one process")
    tiny = ensure_tiny_models(args.cache / "tiny-models")
    with tempfile.TemporaryDirectory(prefix="ray-overhead-") as tmp:
        root = Path(tmp)
        config = load_config(
            profile="tiny",
            cache_dir=root / "cache",
            home=root,
            default_allowed_roots=[],
            overrides={"store_dir": root / "store", "tiny_dir": tiny},
        )
        if args.throughput:
            print("generate_image calls/s with one and two replicas on two simulated nodes (1 CPU each)\n")
            throughput(args, config)
            return
        settings = RaySettings(
            only=frozenset({"tiny-sd15", "tiny-clip"}),
            local_cpus=2,
            local_object_store_bytes=150 * 1024**2,
            deploy_timeout=300,
        )
        engine = RayEngine(config, settings)
        started = time.perf_counter()
        engine.start()
        print(f"cluster started and deployed in {time.perf_counter() - started:.1f} s: {engine.plan}")
        try:
            rows = anyio.run(_measure, args, config, engine)
        finally:
            engine.stop()
    print(
        f"\nmedians of {args.runs} alternating calls per side; generate_image at {args.size} px, "
        f"{args.steps} steps; {os.environ['OMP_NUM_THREADS']} torch thread(s) per side\n"
    )
    print(table(["tool", "in process", "through Serve", "overhead", "ratio", "in the replica"], rows))


if __name__ == "__main__":
    main()
