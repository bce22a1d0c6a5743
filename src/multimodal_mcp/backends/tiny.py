"""Tiny random-weight checkpoints for running the whole server offline on CPU.

Every model here is an instance of the real diffusers / transformers class with a deliberately tiny config
(hidden sizes around 32, one or two layers) and seeded random weights. Each is written with
``save_pretrained(..., safe_serialization=True)`` so that it loads through exactly the same
``from_pretrained`` code path as a real checkpoint. Outputs are noise; the point is exercising the
plumbing end to end.

This module is the registry (which models exist, in which directories) and the build machinery: seeded,
RNG-isolated builds, the ``BUILD_INFO.json`` currency check, locking, and the atomic swap into place. The
builders themselves are in :mod:`multimodal_mcp.backends.tiny_diffusion` (pipelines, ControlNets,
IP-Adapter), :mod:`~multimodal_mcp.backends.tiny_sd3` (SD3 and its ControlNet),
:mod:`~multimodal_mcp.backends.tiny_lora` (LoRAs) and :mod:`multimodal_mcp.backends.tiny_transformers`
(tokenizers, CLIP, VLM, text). All tokenizers are built from hand-written vocabularies, so nothing is
ever downloaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from multimodal_mcp.backends import tiny_diffusion, tiny_lora, tiny_sd3, tiny_transformers

logger = logging.getLogger(__name__)

TINY_BUILD_VERSION: str = "8"

TINY_MODEL_DIRS: dict[str, str] = {
    "sd15": "sd15",
    "sdxl": "sdxl",
    "flux": "flux",
    "controlnet-canny-sd15": "controlnet-canny-sd15",
    "controlnet-canny-sdxl": "controlnet-canny-sdxl",
    "controlnet-canny-flux": "controlnet-canny-flux",
    "sd3": "sd3",
    "controlnet-canny-sd3": "controlnet-canny-sd3",
    "lora-sd15-ink": "lora-sd15-ink",
    "lora-sd15-glow": "lora-sd15-glow",
    "lora-sd3": "lora-sd3",
    "ip-adapter-sd15": "ip-adapter-sd15",
    "clip": "clip",
    "vlm": "vlm",
    "text": "text",
    "detector": "detector",
    "depth": "depth",
    "qwen2-vl": "qwen2-vl",
    "siglip": "siglip",
}

BUILD_INFO_FILE = "BUILD_INFO.json"


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    """Leave the caller's global torch RNG state untouched while we reseed it for every model."""
    import torch

    with torch.random.fork_rng(devices=[]):
        yield


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' per-save "Writing model shards" bars; they are noise in server logs."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "sd15": tiny_diffusion.build_sd15,
    "sdxl": tiny_diffusion.build_sdxl,
    "flux": tiny_diffusion.build_flux,
    "controlnet-canny-sd15": tiny_diffusion.build_controlnet_canny_sd15,
    "controlnet-canny-sdxl": tiny_diffusion.build_controlnet_canny_sdxl,
    "controlnet-canny-flux": tiny_diffusion.build_controlnet_canny_flux,
    "sd3": tiny_sd3.build_sd3,
    "controlnet-canny-sd3": tiny_sd3.build_controlnet_canny_sd3,
    "lora-sd15-ink": tiny_lora.build_lora_sd15_ink,
    "lora-sd15-glow": tiny_lora.build_lora_sd15_glow,
    "lora-sd3": tiny_lora.build_lora_sd3,
    "ip-adapter-sd15": tiny_diffusion.build_ip_adapter_sd15,
    "clip": tiny_transformers.build_clip,
    "vlm": tiny_transformers.build_vlm,
    "text": tiny_transformers.build_text,
    "detector": tiny_transformers.build_detector,
    "depth": tiny_transformers.build_depth,
    "qwen2-vl": tiny_transformers.build_qwen2_vl,
    "siglip": tiny_transformers.build_siglip,
}


# Public API ------------------------------------------------------------------------------------------


def build_tiny_model(name: str, target: Path) -> Path:
    """Build the single tiny model ``name`` (a key of ``TINY_MODEL_DIRS``) directly into ``target``.

    ``target`` must not exist yet or be empty. Builds are deterministic: the same name always produces
    byte-identical safetensors files. The caller's global torch RNG state is preserved.
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; expected one of {sorted(_BUILDERS)}")
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"refusing to build tiny model into non-empty directory {target}")
    target.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _isolated_rng(), _quiet_progress_bars():
        _BUILDERS[name](target)
    logger.debug("built tiny model %s in %.2fs", name, time.perf_counter() - started)
    return target


def build_tiny_models(root: Path) -> Path:
    """Build every tiny model under ``root`` and return ``root``.

    Everything is built in a temporary sibling directory and then renamed into place, so ``root`` is either
    absent, the previous complete build, or the new complete build, never something half written.
    ``root/BUILD_INFO.json`` is the last file written. An existing ``root`` is replaced only if it holds
    nothing but a previous tiny-model build (guarding against deleting an unrelated directory).
    """
    import diffusers
    import torch
    import transformers

    root = Path(root)
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.with_name(f".{root.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    logger.info("building tiny models into %s", root)
    try:
        staging.mkdir()
        for name, subdir in TINY_MODEL_DIRS.items():
            build_tiny_model(name, staging / subdir)
        info = {
            "version": TINY_BUILD_VERSION,
            "models": TINY_MODEL_DIRS,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        }
        (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _swap_into_place(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built tiny models in %.1fs", time.perf_counter() - started)
    return root


def ensure_tiny_models(root: Path) -> Path:
    """Return ``root`` once it holds a tiny-model build of the current ``TINY_BUILD_VERSION``.

    Builds (or rebuilds) only when needed. Concurrent callers, in threads or separate processes, serialise on
    an exclusive ``fcntl.flock`` of ``<root>.lock`` next to ``root`` and re-check after acquiring it, so the
    models are built at most once.
    """
    root = Path(root)
    if _is_current(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    lock_path = root.with_name(root.name + ".lock")
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            if _is_current(root):
                return root
            return build_tiny_models(root)
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _is_current(root: Path) -> bool:
    try:
        info = json.loads((root / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("version") == TINY_BUILD_VERSION


def _check_replaceable(root: Path) -> None:
    """Refuse to replace an existing ``root`` that holds anything besides a previous tiny-model build."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    expected = {*TINY_MODEL_DIRS.values(), BUILD_INFO_FILE}
    unexpected = sorted(entry.name for entry in root.iterdir() if entry.name not in expected)
    if unexpected:
        raise FileExistsError(f"{root} exists and holds files that are not tiny models: {unexpected[:5]}")


def _swap_into_place(staging: Path, root: Path) -> None:
    if not root.exists():
        os.replace(staging, root)
        return
    _check_replaceable(root)
    # A directory cannot be atomically replaced by another non-empty one, so move the old build aside first.
    retired = root.with_name(f".{root.name}.retired-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(root, retired)
    os.replace(staging, root)
    shutil.rmtree(retired, ignore_errors=True)
