"""The devices models run on, and their memory budgets."""

from __future__ import annotations

import logging
import os
import sys
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


GPU_DEVICE_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
"""Files a Linux machine has when torch may find a GPU: the NVIDIA driver, ROCm's kernel driver
(torch's ROCm builds report AMD GPUs as ``cuda``), and WSL's GPU paravirtualization."""


def gpu_may_be_present() -> bool:
    """Whether torch could find a GPU on this machine, answered without importing torch (about 2 s):
    False only on Linux without any of :data:`GPU_DEVICE_FILES`, where torch finds none either.
    Elsewhere (macOS and its MPS, Windows) only torch can tell: True."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(path) for path in GPU_DEVICE_FILES)


def discover_devices(
    setting: str,
    *,
    gpu_headroom_bytes: int,
    cpu_budget_bytes: int | None,
    mps_budget_bytes: int | None = None,
) -> list[Device]:
    """GPUs first (CUDA, then Apple MPS), CPU last. ``setting`` is ``auto``, ``cuda``, ``mps`` or ``cpu``.

    Imports torch only where a GPU may be present (:func:`gpu_may_be_present`) and wanted: a CPU-only
    machine, or ``setting = "cpu"``, gets its answer at once.
    """
    ram = system_memory_bytes()
    cpu = Device("cpu", "cpu", "cpu", ram, cpu_budget_bytes if cpu_budget_bytes is not None else ram // 2)
    if setting == "cpu" or not gpu_may_be_present():
        if setting in ("cuda", "mps"):
            logger.warning(
                "device %r was configured but is not available; models will run on the CPU", setting
            )
        return [cpu]
    import torch

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
