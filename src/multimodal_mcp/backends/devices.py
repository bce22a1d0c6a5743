"""Device and dtype choice."""

from __future__ import annotations

import logging
from typing import Any

from multimodal_mcp.config import DType

logger = logging.getLogger(__name__)


def dtype_itemsize(requested: DType, device: str) -> int:
    """Bytes per floating-point weight once loaded with ``pick_dtype`` (no torch import)."""
    if device == "cpu" or requested == "float32":
        return 4
    return 2


def pick_dtype(requested: DType, device: str, *, model: str) -> Any:
    """float32 on CPU; the configured half precision (default float16) on a GPU."""
    import torch

    if device == "cpu":
        if requested not in ("auto", "float32"):
            logger.info("model %s: %s requested, using float32 on CPU", model, requested)
        return torch.float32
    return {
        "auto": torch.float16,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "float32": torch.float32,
    }[requested]


def module_bytes(modules: Any) -> int:
    """Bytes of the parameters and buffers of the torch modules among ``modules``."""
    import torch

    total = 0
    for module in modules:
        if isinstance(module, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
            total += sum(b.numel() * b.element_size() for b in module.buffers())
    return total
