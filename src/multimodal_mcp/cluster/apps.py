"""Serve application builders, for ``serve deploy`` config files and KubeRay's RayService.

A config file names ``multimodal_mcp.cluster.apps:family_app`` as an application's ``import_path``
with ``args`` saying which family it is and where the config comes from; Serve calls the builder on
the cluster (so this is where the environment is read, as the CLI does for the front). The front
then joins with ``serve --engine ray --ray-address auto --ray-deployed``. Application names must be
``multimodal-mcp-<family>`` and deployment names ``<family>``, the names the front looks for
(families as :func:`multimodal_mcp.cluster.families.plan` makes them). See deploy/ray/.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from multimodal_mcp.cluster.families import plan
from multimodal_mcp.cluster.settings import FamilySettings, RaySettings
from multimodal_mcp.config import Config, load_config


def _config(args: dict[str, Any]) -> Config:
    from platformdirs import user_cache_dir

    config_file = args.get("config") or os.environ.get("MULTIMODAL_MCP_CONFIG")
    return load_config(
        profile=args.get("profile"),
        config_file=Path(config_file) if config_file else None,
        cache_dir=Path(user_cache_dir("multimodal-mcp", appauthor=False)),
        home=Path.home(),
        environ=os.environ,
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
