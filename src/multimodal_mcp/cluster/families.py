"""Which Serve deployment serves which configured model.

A text-to-image model is a family of its own, with the components that attach to it (ControlNets,
IP-Adapters whose ``base_models`` name it), so a replica that holds the base model also holds what
it attaches on the same device. CLIP/SigLIP models share one deployment (``clip``), as do VLMs
(``vlm``), text models (``text``), detectors (``detector``) and depth estimators (``depth``, which
make depth maps from photos for ``control_type="depth"``). ``RaySettings.assign`` overrides any
of it, e.g. to put several checkpoints in one deployment or all tiny models in one. With
``RaySettings.safety`` and the safety filter on, the filter is a deployment too (``safety``, serving
the pseudo-model :data:`SAFETY`).
"""

from __future__ import annotations

import re

from multimodal_mcp.cluster.settings import RaySettings
from multimodal_mcp.config import Config

SERVED_TASKS = ("text_to_image", "clip", "vlm", "text", "detector", "depth")
"""The tasks whose models the front calls by name (the others are components of a base model)."""

SAFETY = "safety-filter"
"""The name the front calls the safety filter by ([server.safety]; not a configured model)."""


def deployment_name(model: str) -> str:
    """A deployment name for a model name (Serve names: letters, digits, '-' and '_')."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", model)[:60]


def plan(config: Config, settings: RaySettings, *, local: set[str]) -> dict[str, list[str]]:
    """{deployment: the models it serves}, for every model of ``local`` (the local backends' models).

    Components go with their base model's deployment; a component whose base models are not served
    goes nowhere (nothing could call it).
    """
    if settings.only is not None:
        components = {
            name
            for name, spec in config.models.items()
            if spec.task not in SERVED_TASKS and set(spec.base_models) & settings.only
        }
        local = local & (settings.only | components)
    out: dict[str, list[str]] = {}
    for name, spec in config.models.items():
        if name not in local:
            continue
        if name in settings.assign:
            out.setdefault(settings.assign[name], []).append(name)
        elif spec.task == "text_to_image":
            out.setdefault(deployment_name(name), []).append(name)
        elif spec.task in SERVED_TASKS:
            out.setdefault(spec.task, []).append(name)
    where = {model: deployment for deployment, models in out.items() for model in models}
    for name, spec in config.models.items():
        if name in local and name not in where and spec.task not in SERVED_TASKS:
            homes = {where[base] for base in spec.base_models if base in where}
            for home in sorted(homes):
                out[home].append(name)
    if settings.safety and config.server.safety.enabled:
        out["safety"] = [SAFETY]
    return out
