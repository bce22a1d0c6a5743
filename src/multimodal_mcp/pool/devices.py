"""The devices models run on, and their memory budgets."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

GiB = 1024**3


@dataclass(frozen=True)
class Device:
    """A place models live: a GPU, or CPU RAM (which is also the offload tier for GPUs).

    ``name`` is what users see (``cuda:0``, ``mps``, ``cpu``); ``torch_device`` is what ``.to()``
    receives. Tests use fake GPUs whose ``torch_device`` is ``cpu``.
    """

    name: str
    torch_device: str
    kind: Literal["gpu", "cpu"]
    total_bytes: int
    budget_bytes: int

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"


def system_memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume 16 GiB
        return 16 * GiB


def discover_devices(
    setting: str,
    *,
    gpu_headroom_bytes: int,
    cpu_budget_bytes: int | None,
    mps_budget_bytes: int | None = None,
) -> list[Device]:
    """GPUs first (CUDA, then Apple MPS), CPU last. ``setting`` is ``auto``, ``cuda``, ``mps`` or ``cpu``."""
    import torch

    ram = system_memory_bytes()
    cpu = Device("cpu", "cpu", "cpu", ram, cpu_budget_bytes if cpu_budget_bytes is not None else ram // 2)
    gpus: list[Device] = []
    if setting in ("auto", "cuda") and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            total = int(torch.cuda.get_device_properties(index).total_memory)
            gpus.append(
                Device(f"cuda:{index}", f"cuda:{index}", "gpu", total, max(0, total - gpu_headroom_bytes))
            )
    elif (
        setting in ("auto", "mps")
        and getattr(torch.backends, "mps", None)
        and torch.backends.mps.is_available()
    ):
        # MPS shares system RAM; its budget is configured (default: half of RAM).
        gpus.append(Device("mps", "mps", "gpu", ram, mps_budget_bytes or ram // 2))
    if setting in ("cuda", "mps") and not gpus:
        logger.warning("device %r was configured but is not available; models will run on the CPU", setting)
    return [*gpus, cpu]
