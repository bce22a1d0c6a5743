"""The MCP front as a Ray Serve ingress: several front replicas behind Serve's HTTP proxy.

With ``serve --engine ray --front-replicas N`` the MCP server itself (tools, resources, jobs, the
image store) runs as ``N`` replicas of one Serve deployment, ``front``, reached through Serve's HTTP
proxy at ``--host``/``--port`` (path ``/mcp``); the model families stay in their own deployments
(:mod:`.engine`). Any replica can answer any request, so the front speaks **stateless** HTTP:

- Protocol 2026-07-28 requests are self-contained (no ``initialize``, no session). A paid call's
  confirmation goes back to the client as an ``InputRequiredResult`` whose ``requestState`` is sealed
  with a key all replicas share (:func:`request_state_key`), so the client's next round may land on
  any replica.
- Clients of 2025-11-25 and earlier still connect (``initialize`` and every later request are
  answered by whichever replica gets them, with no ``Mcp-Session-Id``), but the server cannot send
  them a request in the middle of a call: the client's answer would arrive as a new HTTP request,
  possibly at another replica. So they are never asked to confirm a paid call: the configured
  ``server.spending.default_without_elicitation`` applies to them, as to a client without
  elicitation. Progress notifications still reach them (they ride the call's own response stream).

What the replicas share: jobs through the cluster's job board (a named Ray actor, or Redis), images
through the store (``server.store_dir`` on a shared filesystem, or an object store: S3, GCS, Azure),
and the ``requestState`` key. Each replica has its own model pool for the models that run in the
front (the safety filter unless it runs as a deployment, models left out of ``--ray-models``).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from multimodal_mcp.cluster.settings import FamilySettings, RaySettings
from multimodal_mcp.config import Config, ConfigError

logger = logging.getLogger(__name__)

FRONT = "front"
"""The front's deployment name (its application is ``<app_name>-front``)."""

REQUEST_STATE_KEY_ENV = "MULTIMODAL_MCP_REQUEST_STATE_KEY"
"""An operator secret (32 characters or more) that seals ``requestState`` on every front replica."""


def request_state_key(environ: Mapping[str, str] = os.environ) -> bytes:
    """The secret that seals ``requestState`` on every front replica: ``$MULTIMODAL_MCP_REQUEST_STATE_KEY``
    when set (keep it stable across redeploys, so that a round in flight survives one), else 32 new
    random bytes, shared by the replicas of this deployment only.

    Raises:
        ConfigError: the variable is set but shorter than 32 characters.
    """
    given = environ.get(REQUEST_STATE_KEY_ENV)
    if given is None:
        return secrets.token_bytes(32)
    if len(given) < 32:
        raise ConfigError(
            f"{REQUEST_STATE_KEY_ENV} must be at least 32 characters of secret randomness "
            f"(it is {len(given)}); make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return given.encode()


class MCPFront:
    """One front replica: the whole MCP server over stateless HTTP, models through the cluster.

    Serve builds the ASGI app on the replica (``__serve_build_asgi_app__``) and runs its lifespan,
    which creates the services (store, pool, jobs) as ``serve --transport http`` does.
    """

    def __init__(
        self,
        config: Config,
        settings: RaySettings,
        host: str,
        state_key: bytes,
        job_board_redis: str | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.host = host
        self.state_key = state_key
        self.job_board_redis = job_board_redis

    def __serve_build_asgi_app__(self) -> Any:
        from multimodal_mcp.cluster.engine import RayEngine
        from multimodal_mcp.job_board import RayJobBoard, RedisJobBoard
        from multimodal_mcp.server.app import build_server
        from multimodal_mcp.server.http import http_app

        # Handles to the families the driver deployed; this replica deploys nothing.
        engine = RayEngine(self.config, replace(self.settings, deploy=False))
        ttl = self.config.server.pool.job_ttl_seconds
        board: Any = (
            RedisJobBoard.from_url(self.job_board_redis, ttl_seconds=ttl)
            if self.job_board_redis
            else RayJobBoard.connect(ttl_seconds=ttl)
        )
        server = build_server(
            self.config, engine=engine, job_board=board, request_state_keys=[self.state_key]
        )
        return http_app(server, self.config, host=self.host, stateless=True)


def front_deployment(
    config: Config,
    settings: RaySettings,
    front: FamilySettings,
    *,
    host: str,
    state_key: bytes,
    job_board_redis: str | None = None,
) -> Any:
    """The bound Serve application of the front: ``front.num_replicas`` replicas of :class:`MCPFront`
    at route ``/`` of Serve's HTTP proxy."""
    from ray import serve

    actor: dict[str, Any] = {"num_cpus": front.num_cpus, "num_gpus": front.num_gpus}
    if front.node_labels:
        actor["label_selector"] = dict(front.node_labels)
    deployment: Any = serve.deployment(
        serve.ingress()(MCPFront),
        name=FRONT,
        num_replicas=front.num_replicas,
        max_ongoing_requests=front.max_ongoing_requests,
        max_queued_requests=front.max_queued_requests,
        ray_actor_options=actor,
    )
    return deployment.bind(config, settings, host, state_key, job_board_redis)
