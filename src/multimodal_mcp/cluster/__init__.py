"""The Ray Serve engine: the same tools, with the model work in Ray Serve deployments.

``multimodal-mcp serve --engine ray`` keeps the MCP front (tools, resources, jobs, the image store)
in the server process, or with ``--front-replicas N`` in N replicas behind Serve's HTTP proxy, and
sends each local model's calls to a Serve deployment: one per model family, each replica owning a
model pool of its own. The pieces, from the front to the GPU:

- :mod:`.front`: the MCP front as a Serve ingress (stateless HTTP, a shared ``requestState`` key).
- :mod:`.settings`: what the engine is told (cluster address, timeouts, replicas per family).
- :mod:`.families`: which deployment serves which configured model.
- :mod:`.wire`: the plain-data frames a replica streams back, and errors across the boundary.
- :mod:`.remote`: the front's handles (:mod:`multimodal_mcp.handles` interfaces) over a caller.
- :mod:`.replica`: the deployment class, async methods feeding its pool's device lane.
- :mod:`.engine`: starting or joining the cluster, deploying, and calling with timeouts and cancel.
- :mod:`.status`: the board replicas publish their pool status to (``pool://status``'s ``cluster``).
- :mod:`.apps`: application builders for ``serve deploy`` config files and KubeRay (docs/ray/).

Nothing here imports ``ray`` at import time: the engine when it starts, a replica inside Ray.
"""
