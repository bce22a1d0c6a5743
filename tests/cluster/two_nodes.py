"""A simulated two-node Ray cluster on this machine (run by test_ray_placement.py in a subprocess, so
that it does not meet the session's cluster): a head and a worker labelled ``zone=b``, both on
loopback. The CLIP family asks for ``zone=b``; prints a line "PLACEMENT <json>": the worker's node
id, the node the replica reports, and a classification made through it.

    python tests/cluster/two_nodes.py TINY_DIR WORK_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
from PIL import Image

from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.cluster.engine import RayEngine, app_name
from multimodal_mcp.cluster.settings import FamilySettings, RaySettings
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
        only=frozenset({"tiny-clip"}),
        families={"clip": FamilySettings(node_labels={"zone": "b"})},
        deploy_timeout=120,
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
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
