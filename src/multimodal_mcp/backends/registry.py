"""One registry maps (backend, task) to a loader. Built-in backends register through it like any
third-party backend would; the heavy modules are imported only when a model is first loaded."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.config import ModelSpec
from multimodal_mcp.errors import UnsupportedOperation

Loader = Callable[[str, ModelSpec, LoadContext], Any]

_LOADERS: dict[tuple[str, str], Loader | str] = {}


def register_loader(backend: str, task: str, loader: Loader | str) -> None:
    """Register a loader, or a ``"module:function"`` path imported on first use."""
    _LOADERS[(backend, task)] = loader


def get_loader(backend: str, task: str) -> Loader:
    entry = _LOADERS.get((backend, task))
    if entry is None:
        known = ", ".join(f"{b}/{t}" for b, t in sorted(_LOADERS))
        raise UnsupportedOperation(f"no backend can load {backend}/{task} models; known: {known}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _LOADERS[(backend, task)] = entry
    return entry


register_loader("diffusers", "text_to_image", "multimodal_mcp.backends.diffusion:load_text_to_image")
register_loader("diffusers", "controlnet", "multimodal_mcp.backends.diffusion:load_controlnet")
register_loader("diffusers", "ip_adapter", "multimodal_mcp.backends.diffusion:load_ip_adapter")
register_loader("transformers", "clip", "multimodal_mcp.backends.clip:load_clip")
register_loader("transformers", "vlm", "multimodal_mcp.backends.vlm:load_vlm")
register_loader("transformers", "text", "multimodal_mcp.backends.text:load_text")
