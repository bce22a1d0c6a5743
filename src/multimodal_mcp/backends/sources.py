"""Where a model's weights come from: a hub id, a local directory, or a built-in tiny model."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from multimodal_mcp.config import TINY_SOURCE_PREFIX, ModelSpec
from multimodal_mcp.errors import BackendError


def resolve_source(source: str, tiny_dir: Path) -> str:
    """The argument for ``from_pretrained``; tiny models are built on first use."""
    if not source.startswith(TINY_SOURCE_PREFIX):
        return source
    from multimodal_mcp.backends.tiny import TINY_MODEL_DIRS, ensure_tiny_models

    key = source[len(TINY_SOURCE_PREFIX) :]
    if key not in TINY_MODEL_DIRS:
        raise BackendError(f"unknown tiny model {key!r}; built-in tiny models: {', '.join(TINY_MODEL_DIRS)}")
    return str(ensure_tiny_models(tiny_dir) / TINY_MODEL_DIRS[key])


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def require_safetensors(name: str, spec: ModelSpec, source: str) -> None:
    """Refuse a local model directory whose weights are only pickles (loading a pickle runs code).

    Hub ids are covered by ``use_safetensors=True`` in every ``from_pretrained`` call, which fails
    instead of falling back to ``.bin`` files.
    """
    root = Path(source)
    if not root.is_dir():
        return
    files = [p for p in root.rglob("*") if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return
    pickles = sorted(str(p.relative_to(root)) for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise BackendError(
            f"model {name!r}: its directory holds only pickle weights ({', '.join(pickles[:3])}); this "
            "server loads safetensors only, since loading a pickle can run arbitrary code. Convert the "
            "weights to .safetensors or choose another model."
        )


def pretrained_options(spec: ModelSpec) -> dict[str, object]:
    """``from_pretrained`` options every loader passes: the pinned revision and remote-code policy."""
    options: dict[str, object] = {"use_safetensors": True}
    if spec.revision:
        options["revision"] = spec.revision
    if spec.trust_remote_code:  # config validation requires a pinned commit revision for this
        options["trust_remote_code"] = True
    return options


_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_id(source: str) -> bool:
    """Whether ``source`` names a Hugging Face Hub repository ('org/name', not a tiny model or a local
    directory)."""
    return bool(_HUB_ID.fullmatch(source)) and not Path(source).is_dir()


def in_hub_cache(source: str, revision: str | None = None) -> bool:
    """Whether the Hub repository ``source`` (at ``revision``) has a snapshot in the local cache."""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(source, revision=revision, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or not a valid repository id
        return False
    return True


HUB_PROBE_SECONDS = 5.0


def require_downloadable(name: str, spec: ModelSpec, source: str) -> None:
    """Fail within seconds, naming the model and ``multimodal-mcp pull``, when a Hub model is not in
    the local cache and cannot be downloaded now: offline mode is on (``HF_HUB_OFFLINE``) or the Hub
    does not answer within ``HUB_PROBE_SECONDS``. Otherwise (cached, local, or the Hub answers) the
    loader goes on; without this, a missing model fails after about 30 s of retries with a message
    about a missing ``model_index.json``."""
    if not is_hub_id(source) or in_hub_cache(source, spec.revision):
        return
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    remedy = f"download it first with `multimodal-mcp pull {name}` (on a machine with Hub access)"
    if constants.HF_HUB_OFFLINE:
        raise BackendError(
            f"model {name!r} ({spec.source}) is not in the Hugging Face cache and offline mode is on "
            f"(HF_HUB_OFFLINE=1); {remedy}, or choose another model (list_models)"
        )
    try:
        HfApi().model_info(spec.source, revision=spec.revision, timeout=HUB_PROBE_SECONDS)
    except HfHubHTTPError:
        return  # the Hub answers (not found, gated, ...): the loader reports it with the Hub's reason
    except Exception as exc:
        raise BackendError(
            f"model {name!r} ({spec.source}) is not in the Hugging Face cache and the Hub did not answer "
            f"({type(exc).__name__}); {remedy}, or choose another model (list_models)"
        ) from None


def local_path(source: str, tiny_dir: Path) -> str | None:
    """The local directory holding ``source``'s weights, if they are on this machine (no download)."""
    if source.startswith(TINY_SOURCE_PREFIX):
        return resolve_source(source, tiny_dir)
    if Path(source).is_dir():
        return source
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(source, local_files_only=True))
    except Exception:  # not in the local hub cache (or not a hub id): size unknown until loaded
        return None


def load_error(name: str, spec: ModelSpec, exc: Exception) -> BackendError:
    """A curated load failure: names the model and its source, not a traceback."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return BackendError(
        f"model {name!r} could not be loaded from {spec.source!r} ({type(exc).__name__}: {first_line}). "
        "Check the source in the config, that the weights are downloaded (safetensors only), "
        "or choose another model (see list_models)."
    )


def quiet_progress_bars() -> None:
    """Loading bars from diffusers/transformers/hub would flood the server's stderr log; so would
    their warnings, which are reported in results where they matter (a prompt cut at the text
    encoder's window is in `adjustments`) or are not the user's to act on (a processor's backend
    fallback): errors only, unless the server logs at DEBUG. The libraries set their own levels when
    imported, so this runs after the import."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from huggingface_hub.utils import disable_progress_bars

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    disable_progress_bars()
    if logging.getLogger("multimodal_mcp").getEffectiveLevel() > logging.DEBUG:
        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
