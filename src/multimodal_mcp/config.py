"""Configuration: one frozen, typed object, read once by the CLI and passed down.

A configuration is a built-in *profile* (``default`` with the real checkpoints, or ``tiny`` with
offline random-weight models) optionally overlaid by a TOML file. Library code never reads the
environment; :func:`load_config` is given every input explicitly.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Task = Literal["text_to_image", "controlnet", "ip_adapter", "clip", "vlm"]
Backend = Literal["diffusers", "transformers"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
PreviewFormat = Literal["jpeg", "webp", "png"]
ProfileName = Literal["default", "tiny"]

DefaultFor = Literal["text_to_image", "controlled", "clip", "vlm"]
"""Keys of ``[defaults]``: the model a tool uses when its ``model`` argument is omitted.
``controlled`` names the *base* text-to-image model for ``controlled_generate``."""
_DEFAULT_TASK: dict[str, Task] = {
    "text_to_image": "text_to_image",
    "controlled": "text_to_image",
    "clip": "clip",
    "vlm": "vlm",
}
TINY_SOURCE_PREFIX = "tiny:"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelDefaults(_Frozen):
    """Per-model defaults used when a tool argument is ``None``."""

    steps: int | None = Field(default=None, ge=1, le=200)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=50.0)
    width: int | None = Field(default=None, ge=32, le=4096)
    height: int | None = Field(default=None, ge=32, le=4096)
    scheduler: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=8192)
    template: str | None = None


class ModelSpec(_Frozen):
    """One named model: what it does, how it is loaded, and its defaults."""

    task: Task
    backend: Backend
    source: str = Field(description="Hub id, local directory, or 'tiny:<name>' for a built-in tiny model.")
    dtype: DType = "auto"
    device: str | None = Field(
        default=None, description="Pin to a device ('cpu', 'cuda:1'); default: any with room."
    )
    variant: str | None = None
    description: str = ""
    defaults: ModelDefaults = ModelDefaults()
    control_type: str | None = Field(
        default=None, description="For ControlNets: the control type, e.g. 'canny'."
    )
    base_models: tuple[str, ...] = Field(
        default=(), description="For ControlNets and IP-Adapters: the text-to-image models it fits."
    )
    weight_name: str | None = Field(
        default=None,
        description="For IP-Adapters: the weights file inside source (a path relative to it).",
    )
    image_encoder: str | None = Field(
        default=None, description="For IP-Adapters: the CLIP image encoder's folder inside source."
    )
    pipeline_kwargs: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="Extra keyword arguments passed to every pipeline call."
    )

    @model_validator(mode="after")
    def _controlnet_fields(self) -> ModelSpec:
        if self.task == "controlnet" and (not self.control_type or not self.base_models):
            raise ValueError("a controlnet model needs 'control_type' and 'base_models'")
        if self.task == "ip_adapter" and (
            not self.base_models or not self.weight_name or not self.image_encoder
        ):
            raise ValueError("an ip_adapter model needs 'base_models', 'weight_name' and 'image_encoder'")
        if self.task != "controlnet" and self.control_type:
            raise ValueError("'control_type' applies to controlnet models only")
        if self.task not in ("controlnet", "ip_adapter") and self.base_models:
            raise ValueError("'base_models' applies to controlnet and ip_adapter models only")
        return self


class Limits(_Frozen):
    """Caps on what one call may ask for. Arguments beyond them get an error naming the limit."""

    max_side: int = Field(default=2048, ge=64)
    max_pixels_per_call: int = Field(default=4 * 1024 * 1024, ge=4096, description="width*height*num_images")
    max_images: int = Field(default=4, ge=1, le=16)
    max_steps: int = Field(default=100, ge=1)
    max_input_pixels: int = Field(
        default=40_000_000, ge=4096, description="Decoded size cap for input images."
    )
    max_input_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Encoded size cap for inputs."
    )
    max_labels: int = Field(default=64, ge=2)
    max_prompt_chars: int = Field(default=4000, ge=16)
    max_tokens: int = Field(default=1024, ge=1)


class PoolSettings(_Frozen):
    """How the model pool places, keeps, batches and queues work."""

    gpu_headroom_gib: float = Field(
        default=1.5, ge=0, description="GPU memory kept free for activations, per GPU (GiB)."
    )
    cpu_budget_gib: float | None = Field(
        default=None,
        gt=0,
        description="RAM for models on or offloaded to the CPU (GiB); default: half of RAM.",
    )
    keep_alive_seconds: float = Field(
        default=900, ge=0, description="Unload a model idle this long; 0 keeps models until evicted."
    )
    preload: tuple[str, ...] = Field(default=(), description="Models loaded in the background at startup.")
    max_queue: int = Field(default=32, ge=0, description="Waiting calls per device before 'busy' errors.")
    placement_wait_seconds: float = Field(
        default=30, ge=0, description="How long a load waits for models in use to free memory before 'busy'."
    )
    clip_max_batch: int = Field(
        default=32, ge=1, le=1024, description="Most images in one CLIP forward pass."
    )
    clip_batch_wait_ms: float = Field(
        default=5,
        ge=0,
        le=1000,
        description="How long the first CLIP request waits for others to batch with.",
    )
    text_cache_size: int = Field(default=4096, ge=0, description="CLIP label embeddings kept per model.")
    job_wait_seconds: float = Field(
        default=50,
        gt=0,
        description="A call running longer returns a job handle (get_job) instead of waiting.",
    )
    job_ttl_seconds: float = Field(default=3600, gt=0, description="How long finished jobs stay retrievable.")


SafetyMode = Literal["auto", "on", "off"]
Transport = Literal["stdio", "http"]


class SafetySettings(_Frozen):
    """An optional filter that withholds generated images a classifier flags, whatever the model."""

    filter: SafetyMode = Field(
        default="auto",
        description="'on', 'off', or 'auto': on when serving HTTP, off for stdio (load_config resolves it).",
    )
    classifier: str = Field(
        default="open-nsfw",
        min_length=1,
        description="'open-nsfw' (the [safety] extra), or 'package.module:factory' returning a SafetyFilter.",
    )
    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="An image scoring at least this is withheld."
    )

    @property
    def enabled(self) -> bool:
        """Whether to filter; an unresolved 'auto' (no transport given to load_config) means off."""
        return self.filter == "on"


class ServerSettings(_Frozen):
    """Where the store lives, which paths may be read, where models run, and how results look."""

    store_dir: Path
    tiny_dir: Path
    allowed_roots: tuple[Path, ...] = ()
    device: Device = "auto"
    preview_max_side: int = Field(default=768, ge=64, le=4096)
    preview_format: PreviewFormat = "jpeg"
    result_max_bytes: int = Field(
        default=900_000,
        ge=50_000,
        description="Budget for one tool result's inline previews (base64 included).",
    )
    limits: Limits = Limits()
    pool: PoolSettings = PoolSettings()
    safety: SafetySettings = SafetySettings()


class Config(_Frozen):
    """The whole configuration."""

    profile: ProfileName
    server: ServerSettings
    models: dict[str, ModelSpec]
    defaults: dict[DefaultFor, str]

    @field_validator("models")
    @classmethod
    def _model_names(cls, models: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        for name in models:
            if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(
                    f"model name {name!r} must be 1-64 characters of letters, digits, '-', '_', '.'"
                )
        return models

    @model_validator(mode="after")
    def _references(self) -> Config:
        for task, name in self.defaults.items():
            spec = self.models.get(name)
            if spec is None:
                raise ValueError(f"defaults.{task} names {name!r}, which is not a configured model")
            if spec.task != _DEFAULT_TASK[task]:
                raise ValueError(
                    f"defaults.{task} names {name!r}, whose task is {spec.task!r}, "
                    f"not {_DEFAULT_TASK[task]!r}"
                )
        for name in self.server.pool.preload:
            if name not in self.models:
                raise ValueError(f"server.pool.preload names {name!r}, which is not a configured model")
        for name, spec in self.models.items():
            for base in spec.base_models:
                if base not in self.models or self.models[base].task != "text_to_image":
                    raise ValueError(
                        f"model {name!r}: base model {base!r} is not a configured text_to_image model"
                    )
        return self

    def models_for(self, task: Task) -> list[str]:
        return [name for name, spec in self.models.items() if spec.task == task]


class ConfigError(Exception):
    """The configuration file or options are invalid; the message says where."""


# --- built-in profiles --------------------------------------------------------------------------

_DEFAULT_MODELS: dict[str, dict[str, Any]] = {
    "sdxl": {
        "task": "text_to_image",
        "backend": "diffusers",
        "source": "stabilityai/stable-diffusion-xl-base-1.0",
        "dtype": "float16",
        "variant": "fp16",
        "description": "Stable Diffusion XL base 1.0: general-purpose text to image at 1024 px.",
        "defaults": {"steps": 30, "guidance_scale": 7.5, "width": 1024, "height": 1024, "scheduler": "dpm++"},
    },
    "flux-schnell": {
        "task": "text_to_image",
        "backend": "diffusers",
        "source": "black-forest-labs/FLUX.1-schnell",
        "dtype": "bfloat16",
        "description": "FLUX.1 [schnell]: flow-matching, guidance-distilled, good images in 4 steps.",
        "defaults": {
            "steps": 4,
            "guidance_scale": 0.0,
            "width": 1024,
            "height": 1024,
            "scheduler": "flow_euler",
        },
        "pipeline_kwargs": {"max_sequence_length": 256},
    },
    "sd15": {
        "task": "text_to_image",
        "backend": "diffusers",
        "source": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "dtype": "float16",
        "description": "Stable Diffusion 1.5 at 512 px; the base for the canny ControlNet.",
        "defaults": {"steps": 30, "guidance_scale": 7.5, "width": 512, "height": 512, "scheduler": "dpm++"},
    },
    "controlnet-canny-sd15": {
        "task": "controlnet",
        "backend": "diffusers",
        "source": "lllyasviel/control_v11p_sd15_canny",
        "dtype": "float16",
        "control_type": "canny",
        "base_models": ["sd15"],
        "description": "ControlNet 1.1 canny edges for Stable Diffusion 1.5.",
    },
    "controlnet-depth-sd15": {
        "task": "controlnet",
        "backend": "diffusers",
        "source": "lllyasviel/control_v11f1p_sd15_depth",
        "dtype": "float16",
        "control_type": "depth",
        "base_models": ["sd15"],
        "description": "ControlNet 1.1 depth maps for Stable Diffusion 1.5 (pass a prepared depth map).",
    },
    "controlnet-canny-sdxl": {
        "task": "controlnet",
        "backend": "diffusers",
        "source": "diffusers/controlnet-canny-sdxl-1.0",
        "dtype": "float16",
        "control_type": "canny",
        "base_models": ["sdxl"],
        "description": "Canny edges ControlNet for SDXL 1.0.",
    },
    "controlnet-canny-flux": {
        "task": "controlnet",
        "backend": "diffusers",
        "source": "InstantX/FLUX.1-dev-Controlnet-Canny",
        "dtype": "bfloat16",
        "control_type": "canny",
        "base_models": ["flux-schnell"],
        "description": "Canny ControlNet trained on FLUX.1 [dev], used here with FLUX.1 [schnell].",
    },
    "ip-adapter-sd15": {
        "task": "ip_adapter",
        "backend": "diffusers",
        "source": "h94/IP-Adapter",
        "weight_name": "models/ip-adapter_sd15.safetensors",
        "image_encoder": "models/image_encoder",
        "dtype": "float16",
        "base_models": ["sd15"],
        "description": "IP-Adapter for SD 1.5: transfers style or subject from a reference image.",
    },
    "clip-vit-l-14": {
        "task": "clip",
        "backend": "transformers",
        "source": "openai/clip-vit-large-patch14",
        "description": "OpenAI CLIP ViT-L/14: zero-shot classification and image similarity.",
    },
    "llava-1.6-mistral-7b": {
        "task": "vlm",
        "backend": "transformers",
        "source": "llava-hf/llava-v1.6-mistral-7b-hf",
        "dtype": "float16",
        "description": "LLaVA 1.6 (Mistral 7B): describes images and answers questions about them.",
        "defaults": {"max_tokens": 256},
    },
}
_DEFAULT_TASKS: dict[str, str] = {
    "text_to_image": "sdxl",
    "controlled": "sd15",
    "clip": "clip-vit-l-14",
    "vlm": "llava-1.6-mistral-7b",
}

_TINY_NOTE = "Tiny random-weight model built offline; its output is noise, for tests and demos only."
_TINY_MODELS: dict[str, dict[str, Any]] = {
    "tiny-sd15": {
        "task": "text_to_image",
        "backend": "diffusers",
        "source": "tiny:sd15",
        "description": f"Stable Diffusion 1.5 architecture. {_TINY_NOTE}",
        "defaults": {"steps": 2, "guidance_scale": 7.5, "width": 64, "height": 64, "scheduler": "dpm++"},
    },
    "tiny-sdxl": {
        "task": "text_to_image",
        "backend": "diffusers",
        "source": "tiny:sdxl",
        "description": f"SDXL architecture. {_TINY_NOTE}",
        "defaults": {"steps": 2, "guidance_scale": 7.5, "width": 64, "height": 64, "scheduler": "dpm++"},
    },
    "tiny-flux": {
        "task": "text_to_image",
        "backend": "diffusers",
        "source": "tiny:flux",
        "description": f"Flux architecture (flow matching). {_TINY_NOTE}",
        "defaults": {"steps": 2, "guidance_scale": 0.0, "width": 64, "height": 64, "scheduler": "flow_euler"},
        "pipeline_kwargs": {"max_sequence_length": 32},
    },
    "tiny-controlnet-canny": {
        "task": "controlnet",
        "backend": "diffusers",
        "source": "tiny:controlnet-canny-sd15",
        "control_type": "canny",
        "base_models": ["tiny-sd15"],
        "description": f"Canny ControlNet for the tiny SD 1.5. {_TINY_NOTE}",
    },
    "tiny-controlnet-depth": {
        "task": "controlnet",
        "backend": "diffusers",
        "source": "tiny:controlnet-canny-sd15",
        "control_type": "depth",
        "base_models": ["tiny-sd15"],
        "description": f"A depth ControlNet stand-in for the tiny SD 1.5 (canny weights). {_TINY_NOTE}",
    },
    "tiny-controlnet-canny-sdxl": {
        "task": "controlnet",
        "backend": "diffusers",
        "source": "tiny:controlnet-canny-sdxl",
        "control_type": "canny",
        "base_models": ["tiny-sdxl"],
        "description": f"Canny ControlNet for the tiny SDXL. {_TINY_NOTE}",
    },
    "tiny-controlnet-canny-flux": {
        "task": "controlnet",
        "backend": "diffusers",
        "source": "tiny:controlnet-canny-flux",
        "control_type": "canny",
        "base_models": ["tiny-flux"],
        "description": f"Canny ControlNet for the tiny Flux. {_TINY_NOTE}",
    },
    "tiny-ip-adapter": {
        "task": "ip_adapter",
        "backend": "diffusers",
        "source": "tiny:ip-adapter-sd15",
        "weight_name": "ip_adapter.safetensors",
        "image_encoder": "image_encoder",
        "base_models": ["tiny-sd15"],
        "description": f"IP-Adapter for the tiny SD 1.5. {_TINY_NOTE}",
    },
    "tiny-clip": {
        "task": "clip",
        "backend": "transformers",
        "source": "tiny:clip",
        "description": f"CLIP architecture. {_TINY_NOTE}",
    },
    "tiny-vlm": {
        "task": "vlm",
        "backend": "transformers",
        "source": "tiny:vlm",
        "description": f"LLaVA architecture (CLIP vision tower, Llama text model). {_TINY_NOTE}",
        "defaults": {"max_tokens": 16},
    },
}
_TINY_TASKS: dict[str, str] = {
    "text_to_image": "tiny-sd15",
    "controlled": "tiny-sd15",
    "clip": "tiny-clip",
    "vlm": "tiny-vlm",
}

PROFILES: dict[str, tuple[dict[str, dict[str, Any]], dict[str, str]]] = {
    "default": (_DEFAULT_MODELS, _DEFAULT_TASKS),
    "tiny": (_TINY_MODELS, _TINY_TASKS),
}


def _expand(path: str | Path, home: Path) -> Path:
    text = str(path)
    if text == "~" or text.startswith("~/"):
        text = str(home) + text[1:]
    return Path(text)


def load_config(
    *,
    profile: str | None = None,
    config_file: Path | None = None,
    cache_dir: Path,
    home: Path,
    default_allowed_roots: list[Path] | None = None,
    overrides: Mapping[str, Any] | None = None,
    transport: Transport | None = None,
) -> Config:
    """Build the configuration from a profile, an optional TOML file, and explicit overrides.

    Args:
        profile: ``default`` or ``tiny``. Overrides the file's ``profile`` key. Defaults to ``default``.
        config_file: A TOML file with optional ``profile``, ``[server]``, ``[defaults]`` and
            ``[models.<name>]`` tables. Models it names are added to (or replace) the profile's.
        cache_dir: The per-user cache directory; the store and tiny models live below it by default.
        home: The user's home directory (``~`` in paths expands to it).
        default_allowed_roots: Directories clients may read when the file sets no ``allowed_roots``
            (the CLI passes the home directory for stdio and nothing for HTTP).
        overrides: Keys of the ``[server]`` table set on the command line (e.g. ``store_dir``).
        transport: How the server will be reached; resolves ``[server.safety] filter = "auto"``
            (on for ``http``, off for ``stdio``). ``None`` leaves it unresolved, which means off.

    Raises:
        ConfigError: with the file and the offending key in the message.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        unknown = set(data) - {"profile", "server", "defaults", "models"}
        if unknown:
            raise ConfigError(
                f"config file {config_file}: unknown top-level keys {sorted(unknown)}; "
                "expected profile, server, defaults, models"
            )

    chosen = profile or data.get("profile") or "default"
    if chosen not in PROFILES:
        raise ConfigError(f"unknown profile {chosen!r}; choose one of {sorted(PROFILES)}")
    base_models, base_tasks = PROFILES[chosen]

    models: dict[str, Any] = {name: dict(spec) for name, spec in base_models.items()}
    models.update(data.get("models", {}))
    tasks: dict[str, Any] = {**base_tasks, **data.get("defaults", {})}

    server: dict[str, Any] = {
        "store_dir": cache_dir / "images",
        "tiny_dir": cache_dir / "tiny-models",
        "allowed_roots": list(default_allowed_roots or []),
    }
    server.update(data.get("server", {}))
    server.update(overrides or {})
    for key in ("store_dir", "tiny_dir"):
        server[key] = _expand(server[key], home)
    server["allowed_roots"] = [_expand(p, home) for p in server.get("allowed_roots", [])]
    safety = server.get("safety")
    if transport is not None and isinstance(safety, dict | None):
        safety = dict(safety or {})
        if safety.get("filter", "auto") == "auto":
            safety["filter"] = "on" if transport == "http" else "off"
        server["safety"] = safety

    try:
        return Config.model_validate(
            {"profile": chosen, "server": server, "models": models, "defaults": tasks}
        )
    except ValidationError as exc:
        where = f"config file {config_file}" if config_file else f"profile {chosen!r}"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration ({where}): {problems}") from exc
