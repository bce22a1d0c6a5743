"""Serve application builders, for ``serve deploy`` config files and KubeRay's RayService.

A config file names ``multimodal_mcp.cluster.apps:family_app`` as an application's ``import_path``
with ``args`` saying which family it is and where the config comes from; Serve calls the builder on
the cluster (so this is where the environment is read, as the CLI does for the front). The MCP front
is either an application of the same file (``front_app``: Serve's HTTP proxy routes to its replicas)
or a process that joins with ``serve --engine ray --ray-address auto --ray-deployed``. Application
names must be ``multimodal-mcp-<family>`` and deployment names ``<family>``, the names the front
looks for (families as :func:`multimodal_mcp.cluster.families.plan` makes them); the front's are
``multimodal-mcp-front`` and ``front``. See docs/ray/.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from multimodal_mcp.cluster.families import plan
from multimodal_mcp.cluster.settings import FamilySettings, RaySettings
from multimodal_mcp.config import Config, load_config


def _config(args: dict[str, Any], *, http: bool = False) -> Config:
    """The config as ``serve`` loads it (``http``: as for ``--transport http``, with the static tokens
    of ``$MULTIMODAL_MCP_TOKENS`` and no default allowed roots)."""
    from platformdirs import user_cache_dir

    from multimodal_mcp.server.http import tokens_from_env

    config_file = args.get("config") or os.environ.get("MULTIMODAL_MCP_CONFIG")
    return load_config(
        profile=args.get("profile"),
        config_file=Path(config_file) if config_file else None,
        cache_dir=Path(user_cache_dir("multimodal-mcp", appauthor=False)),
        home=Path.home(),
        default_allowed_roots=[] if http else None,
        static_tokens=tokens_from_env(os.environ) if http else None,
        environ=os.environ,
        transport="http" if http else "stdio",
    )


def family_app(args: dict[str, Any]) -> Any:
    """The Serve application of one family.

    ``args``: ``family`` (a deployment name the front's plan has, e.g. ``sdxl`` or ``clip``);
    ``profile`` and ``config`` (a TOML file on the nodes; default ``$MULTIMODAL_MCP_CONFIG``) as
    the front's; ``max_models_per_replica`` (optional, a positive integer): how many of the family's
    checkpoints Serve's multiplexed cache keeps per replica (default: all of them; see
    :class:`.settings.FamilySettings`). Family ``safety`` runs the safety filter (for fronts with
    ``RaySettings.safety``); the config must turn it on (``[server.safety] filter = "on"``).
    Replicas, GPUs, node labels and autoscaling come from the config file's ``deployments``
    section, which overrides the defaults here.

    Raises:
        ValueError: the family is not in the plan of that config (the message lists those that are),
            the safety filter is off in it (for ``safety``), or ``max_models_per_replica`` is not a
            positive integer.
    """
    from multimodal_mcp.cluster.engine import family_deployment, local_models
    from multimodal_mcp.cluster.status import board_name

    config = _config(args)
    families = plan(config, RaySettings(safety=True), local=local_models(config))
    family = str(args.get("family", ""))
    if family == "safety" and family not in families:
        raise ValueError(
            "the safety filter is off in this config (filter 'auto' is off without a transport): set "
            '[server.safety] filter = "on" in the config file the replicas load'
        )
    if family not in families:
        raise ValueError(f"no family {family!r} in this config; its families: {', '.join(families)}")
    max_models = args.get("max_models_per_replica")
    if max_models is not None and (not isinstance(max_models, int) or max_models < 1):
        raise ValueError(
            f"max_models_per_replica must be a positive integer, got {max_models!r}; "
            "e.g. max_models_per_replica: 1, or leave it out to keep all of the family's checkpoints"
        )
    return family_deployment(
        config,
        family,
        families[family],
        FamilySettings(max_models_per_replica=max_models),
        status_board=board_name(RaySettings().app_name),
    )


def front_app(args: dict[str, Any]) -> Any:
    """The Serve application of the MCP front (:mod:`.front`): stateless HTTP behind Serve's proxy.

    ``args``: ``profile`` and ``config`` as :func:`family_app`; ``host`` (default ``0.0.0.0``):
    the address clients reach, which the Host/Origin check allows besides
    ``server.http.allowed_hosts`` and ``allowed_hosts`` (a list: the names clients use, e.g. a
    Kubernetes service ``multimodal-mcp-serve-svc:8000``); ``job_board_redis`` (a Redis URL;
    default: the cluster's job board actor); ``insecure_no_auth`` (true: serve beyond loopback
    without the auth of ``server.http.auth``, only behind a proxy that authenticates). The
    ``requestState`` key is ``$MULTIMODAL_MCP_REQUEST_STATE_KEY`` when set (keep it stable across
    redeploys), else random for this deployment. Replicas and resources come from the config
    file's ``deployments`` section.

    Raises:
        ConfigError: no auth configured for a host beyond loopback, or a request-state key too short.
    """
    from multimodal_mcp.cluster.front import front_deployment, request_state_key
    from multimodal_mcp.server.http import check_binding

    config = _config(args, http=True)
    extra_hosts = tuple(str(h) for h in args.get("allowed_hosts") or ())
    if extra_hosts:
        http = config.server.http
        http = http.model_copy(update={"allowed_hosts": (*http.allowed_hosts, *extra_hosts)})
        config = config.model_copy(update={"server": config.server.model_copy(update={"http": http})})
    host = str(args.get("host", "0.0.0.0"))
    check_binding(host, config.server.http.auth, insecure_no_auth=bool(args.get("insecure_no_auth")))
    redis = args.get("job_board_redis")
    return front_deployment(
        config,
        RaySettings(deploy=False),
        FamilySettings(num_replicas=2, max_ongoing_requests=64, max_queued_requests=256),
        host=host,
        state_key=request_state_key(),
        job_board_redis=str(redis) if redis else None,
    )
