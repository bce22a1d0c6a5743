"""``multimodal-mcp pull``: download what local models need into the Hugging Face cache, up front.

A Hub model is otherwise downloaded by its first call, which can take many minutes (or fail after
retries when the Hub cannot be reached). ``pull`` fetches the files the loaders read, safetensors
only, with the hub's progress bars; it checks the free disk space first, and an interrupted pull
resumes where it stopped (huggingface_hub keeps partial files). ``models`` shows what is present.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multimodal_mcp.backends.sources import PICKLE_SUFFIXES, in_hub_cache, is_hub_id
from multimodal_mcp.config import Config, ConfigError, ModelSpec

# Weight formats the loaders never read (they load safetensors only): never downloaded.
SKIPPED_SUFFIXES = (*PICKLE_SUFFIXES, ".msgpack", ".h5", ".onnx", ".onnx_data", ".ot", ".gguf", ".tflite")
_SHARD = re.compile(r"-\d{5}-of-\d{5}$")


@dataclass(frozen=True)
class Download:
    """One model's files to fetch from the Hub: (path in the repository, size in bytes)."""

    name: str
    repo: str
    revision: str | None
    files: tuple[tuple[str, int], ...]

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)


def hub_models(config: Config, names: Sequence[str] = ()) -> list[tuple[str, ModelSpec]]:
    """The configured models whose weights come from the Hub: those named, or all of them.

    Raises:
        ConfigError: a name that is not configured, or one whose weights do not come from the Hub.
    """
    for name in names:
        if name not in config.models:
            raise ConfigError(
                f"no model named {name!r} in profile {config.profile!r}; configured: "
                f"{', '.join(config.models)}"
            )
        if not is_hub_id(config.models[name].source) or config.models[name].hosted:
            raise ConfigError(
                f"model {name!r} ({config.models[name].source}) has nothing to download: it is hosted, "
                "built in (tiny) or a local directory"
            )
    chosen = names or list(config.models)
    return [
        (name, config.models[name])
        for name in chosen
        if not config.models[name].hosted and is_hub_id(config.models[name].source)
    ]


def _variant(path: str) -> str | None:
    """'fp16' for 'unet/diffusion_pytorch_model.fp16.safetensors' or 'model.fp16-00001-of-00002...'."""
    parts = path.rsplit("/", 1)[-1].split(".")
    return _SHARD.sub("", parts[-2]) if len(parts) >= 3 else None


def wanted(path: str, spec: ModelSpec, *, pipeline: bool) -> bool:
    """Whether the loaders read ``path`` of ``spec``'s repository: configs, tokenizers and the
    safetensors of the configured variant; for a diffusers pipeline (``pipeline``: it has a
    model_index.json) not the single-file checkpoints at its top level nor the single-file text
    encoders Stability's SD3 repositories carry for ComfyUI (``text_encoders/``); for an IP-Adapter
    (or a LoRA with ``weight_name``), only its weights file and image encoder."""
    if path.endswith(SKIPPED_SUFFIXES) or path.startswith("."):
        return False
    if spec.weight_name is not None:  # an IP-Adapter: one weights file of many, and its image encoder
        encoder = f"{spec.image_encoder}/" if spec.image_encoder else None
        if path != spec.weight_name and not (encoder and path.startswith(encoder)):
            return False
        return not path.endswith(".safetensors") or path == spec.weight_name or _variant(path) == spec.variant
    if path.endswith(".safetensors"):
        single_file = "/" not in path or path.startswith("text_encoders/")
        return not (pipeline and single_file) and _variant(path) == spec.variant
    return True


def plan(
    models: Iterable[tuple[str, ModelSpec]], list_files: Callable[[str, str | None], list[tuple[str, int]]]
) -> list[Download]:
    """What to download for each model; ``list_files(repo, revision)`` lists a repository's files
    with their sizes (the Hub API: :func:`hub_files`)."""
    downloads = []
    for name, spec in models:
        files = list_files(spec.source, spec.revision)
        pipeline = any(path == "model_index.json" for path, _ in files)
        chosen = tuple((path, size) for path, size in files if wanted(path, spec, pipeline=pipeline))
        downloads.append(Download(name, spec.source, spec.revision, chosen))
    return downloads


def hub_files(repo: str, revision: str | None) -> list[tuple[str, int]]:
    """The files of Hub repository ``repo`` with their sizes."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=revision, files_metadata=True, timeout=30)
    return [(sibling.rfilename, int(sibling.size or 0)) for sibling in info.siblings or []]


def cached_bytes(download: Download) -> int:
    """Bytes of ``download``'s files already in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    return sum(
        size
        for path, size in download.files
        if isinstance(try_to_load_from_cache(download.repo, path, revision=download.revision), str)
    )


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def check_space(needed: int, cache: Path) -> None:
    """Raises ConfigError when the disk holding ``cache`` has less than ``needed`` bytes free."""
    probe = cache
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise ConfigError(
            f"pull needs {_gb(needed)} more in {cache} but {_gb(free)} is free there; free some space, "
            "or set HF_HOME (or HF_HUB_CACHE) to a folder on a bigger disk"
        )


def pull(downloads: Sequence[Download], cache: Path, echo: Callable[[str], Any] = print) -> None:
    """Checks the free space, then downloads each model's files with the hub's progress bars."""
    from huggingface_hub import snapshot_download

    missing = {d.name: d.size - cached_bytes(d) for d in downloads}
    for d in downloads:
        state = "present" if missing[d.name] == 0 else f"{_gb(missing[d.name])} to download"
        echo(f"{d.name}: {d.repo}, {len(d.files)} files, {_gb(d.size)} ({state})")
    check_space(sum(missing.values()), cache)
    for d in downloads:
        if missing[d.name] == 0:
            continue
        echo(f"pulling {d.name} ({d.repo})")
        snapshot_download(d.repo, revision=d.revision, allow_patterns=[path for path, _ in d.files])
    echo(f"done: {len(downloads)} model(s) in {cache}")


def presence(config: Config) -> dict[str, bool]:
    """For each Hub model of ``config``: whether the local cache has it (``models`` shows this)."""
    return {name: in_hub_cache(spec.source, spec.revision) for name, spec in hub_models(config)}
