"""A simulated two-node Ray cluster on this machine (run by test_ray_placement.py in a subprocess, so
that it does not meet the session's cluster): a head and a worker labelled ``zone=b``, both on
loopback. The CLIP and tiny SD 1.5 families ask for ``zone=b``; prints a line "PLACEMENT <json>":
the worker's node id, the node the replica reports, and a classification made through it. Then the
worker node is removed while a long generation runs on it, and a line "NODELOSS <json>" says how
the call ended (the error's class and message) and how many seconds after the node went.

    python tests/cluster/two_nodes.py TINY_DIR WORK_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anyio
from PIL import Image

from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.cluster.engine import RayEngine, app_name
from multimodal_mcp.cluster.settings import FamilySettings, RaySettings
from multimodal_mcp.handles import ImageRequest
from multimodal_mcp.hub import ModelHub
from multimodal_mcp.pool.core import ModelPool

from helpers import cpu_only, make_config


def main() -> None:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    tiny, work = Path(sys.argv[1]), Path(sys.argv[2])
    (work / "allowed").mkdir(parents=True, exist_ok=True)
    config = make_config(work, tiny, work / "allowed")
    loopback = {"node_ip_address": "127.0.0.2", "object_store_memory": 100 * 1024**2}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, **loopback}
    )
    worker = cluster.add_node(num_cpus=1, labels={"zone": "b"}, **loopback)
    ray.init(address=cluster.address, log_to_driver=False)
    settings = RaySettings(
        only=frozenset({"tiny-clip", "tiny-sd15"}),
        families={
            "clip": FamilySettings(node_labels={"zone": "b"}),
            "tiny-sd15": FamilySettings(node_labels={"zone": "b"}),
        },
        deploy_timeout=120,
        silence_timeout=20,
        heartbeat=0.5,
    )
    engine = RayEngine(config, settings)
    try:
        engine.start()
        hub = ModelHub(config, ModelPool(config, cpu_only()), HostedConnections(config.hosted), engine)

        async def run() -> dict[str, object]:
            scores = await hub.embedder("tiny-clip").classify(Image.new("RGB", (32, 32), "red"), ["a", "b"])
            handle = serve.get_deployment_handle("clip", app_name=app_name(settings, "clip"))
            status = await handle.status.remote()
            return {
                "worker": worker.node_id,
                "head": cluster.head_node.node_id,
                "replica": status["node"],
                "scores": scores,
            }

        print("PLACEMENT " + json.dumps(anyio.run(run)), flush=True)

        async def lose_the_node() -> dict[str, object]:
            stepping = anyio.Event()

            async def progress(done: float, total: float | None, message: str | None) -> None:
                if done >= 2:
                    stepping.set()

            request = ImageRequest(
                prompt="a red cube", width=64, height=64, steps=5000, scheduler="euler", seeds=(1,)
            )
            outcome: dict[str, object] = {}

            async def generate() -> None:
                try:
                    await hub.image_generator("tiny-sd15").generate(request, progress=progress)
                    outcome["error"] = None
                except Exception as exc:
                    outcome.update(error=type(exc).__name__, message=str(exc), at=time.monotonic())
                finally:
                    ended.set()
                    stepping.set()

            ended = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(generate)
                with anyio.fail_after(120):
                    await stepping.wait()  # running on the worker, or ended already
                removed = time.monotonic()
                if ended.is_set():
                    return {**outcome, "ended_before_removal": True}
                await anyio.to_thread.run_sync(cluster.remove_node, worker)
                with anyio.fail_after(60):  # the test's bound: the engine's own is silence_timeout (20 s)
                    await ended.wait()
            outcome["seconds_after_removal"] = round(float(outcome.pop("at", removed)) - removed, 2)
            return outcome

        print("NODELOSS " + json.dumps(anyio.run(lose_the_node)), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
