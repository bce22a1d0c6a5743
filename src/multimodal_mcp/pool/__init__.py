"""The model pool: placement within memory budgets, eviction, queues, batching and progress."""

from multimodal_mcp.pool.core import ModelPool, ModelState, Progress, is_out_of_memory
from multimodal_mcp.pool.devices import Device, discover_devices

__all__ = ["Device", "ModelPool", "ModelState", "Progress", "discover_devices", "is_out_of_memory"]
