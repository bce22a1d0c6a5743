"""Configuration: one frozen, typed object, read once by the CLI and passed down.

A configuration is a built-in *profile* (``default`` with the real checkpoints, or ``tiny`` with
offline random-weight models) optionally overlaid by a TOML file. The profiles are data, config files
themselves (:mod:`multimodal_mcp.catalogs`), read by the code that reads the user's file. Library code
never reads the environment; :func:`load_config` is given every input explicitly.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from multimodal_mcp import catalogs
from multimodal_mcp.hosted_settings import (
    GOOGLE_CLOUD_SETTINGS,
    PROJECT_SETTINGS,
    HostedConfig,
    HostedSettings,
    registered_backend,
    resolve_endpoints,
)
from multimodal_mcp.server_settings import (  # noqa: F401 (re-exported: importers keep using config)
    CLIENT_LIMITS,
    MIN_TOKEN_CHARS,
    AuthConfig,
    ClientLimits,
    HttpSettings,
    OAuthSettings,
    PoolSettings,
    SafetyMode,
    SafetySettings,
    SpendingSettings,
    StaticToken,
    StoreSettings,
    Transport,
    UrlSettings,
    VerificationSettings,
)

Task = Literal[
    "text_to_image", "controlnet", "ip_adapter", "lora", "clip", "vlm", "text", "detector", "depth"
]
DType = Literal["auto", "float32", "float16", "bfloat16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
PreviewFormat = Literal["jpeg", "webp", "png"]
ProfileName = Literal["default", "tiny", "auto"]
Delivery = Literal["preview", "full", "none", "path"]
"""How results carry images: ``preview`` (small inline image + resource link), ``full`` (the PNG inline
when it fits the client's limits, else a preview), ``none`` (text and links only), ``path`` (a preview
plus the stored PNG's local absolute path)."""
ClientLimitsPreset = Literal["claude-desktop", "claude-code", "generic"]

DefaultFor = Literal["text_to_image", "controlled", "clip", "vlm", "prompt_rewrite", "detector", "depth"]
"""Keys of ``[defaults]``: the model a tool uses when its ``model`` argument is omitted.
``controlled`` names the *base* text-to-image model for ``controlled_generate``; ``prompt_rewrite``
the text model that ``enhance_prompt=True`` rewrites prompts with (and verify="thorough" lists facts
with); ``detector`` the zero-shot object detector verify="thorough" counts and places objects with;
``depth`` the depth estimator that makes depth maps from photos for controlled_generate."""
_DEFAULT_TASK: dict[str, Task] = {
    "text_to_image": "text_to_image",
    "controlled": "text_to_image",
    "clip": "clip",
    "vlm": "vlm",
    "prompt_rewrite": "text",
    "detector": "detector",
    "depth": "depth",
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


_COMMIT = re.compile(r"[0-9a-f]{40}")


class ModelSpec(_Frozen):
    """One named model: what it does, how it is loaded, and its defaults."""

    task: Task
    backend: str = Field(
        min_length=1,
        max_length=64,
        description="A registered backend (entry-point group multimodal_mcp.backends): diffusers, "
        "transformers, openai, gemini, or one a plugin package adds.",
    )
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
        default=(), description="For ControlNets, IP-Adapters and LoRAs: the text-to-image models it fits."
    )
    weight_name: str | None = Field(
        default=None,
        description="For IP-Adapters and LoRAs: the weights file inside source (a path relative to it).",
    )
    trigger_words: tuple[str, ...] = Field(
        default=(), description="For LoRAs: words appended to the prompt when it is used (if not there)."
    )
    scale: float = Field(default=1.0, ge=-2, le=2, description="For LoRAs: the scale if a call gives none.")
    image_encoder: str | None = Field(
        default=None, description="For IP-Adapters: the CLIP image encoder's folder inside source."
    )
    pipeline_kwargs: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="Extra pipeline call keyword arguments (ComfyUI: template values)."
    )
    revision: str | None = Field(
        default=None,
        max_length=64,
        description="Hub revision to load (a branch, tag or commit); a 40-hex commit pins it.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run Python code shipped with the checkpoint. Only with a pinned 40-hex commit revision.",
    )

    paid: bool | None = Field(
        default=None,
        description="Whether a call costs money (see server.spending); default: false for a model with "
        "its own base_url, else the backend's own (true for hosted providers, false for local models).",
    )
    base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Hosted models: this model's own endpoint (a server speaking the backend's API, local "
        "or a proxy) instead of [hosted.<backend>].base_url. Sends no key unless api_key_env is set.",
    )
    api_key_env: str | None = Field(
        default=None,
        min_length=1,
        description="Hosted models: the environment variable holding this model's API key (default: the "
        "provider's key, or none with base_url).",
    )
    timeout: float | None = Field(
        default=None, gt=0, le=3600, description="Hosted models: seconds per request and attempt."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Hosted models: extra HTTP headers.")
    architecture: str | None = Field(
        default=None,
        max_length=32,
        description="For diffusers text_to_image models: the pipeline family (sd, sdxl, flux, sd3), which "
        "fixes what the model takes before it is loaded; default: read from the checkpoint or its name.",
    )
    capabilities: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of what the backend declares this model honours (see list_models), e.g. "
        "{max_images = 1} for a server that makes one image per request.",
    )

    @model_validator(mode="after")
    def _remote_code_needs_a_pinned_revision(self) -> ModelSpec:
        if self.trust_remote_code and not (self.revision and _COMMIT.fullmatch(self.revision)):
            raise ValueError(
                "trust_remote_code = true runs code from the checkpoint, so it needs 'revision' pinned to a "
                "full 40-hex commit hash (a branch or tag can change under you)"
            )
        return self

    @property
    def is_paid(self) -> bool:
        if self.paid is not None:
            return self.paid
        return False if self.base_url is not None else bool(registered_backend(self.backend).paid)

    @property
    def own_endpoint(self) -> bool:
        """True when the model sets where or how its requests go (base_url, api_key_env, timeout, headers)."""
        return bool(self.base_url or self.api_key_env or self.timeout or self.headers)

    @model_validator(mode="after")
    def _controlnet_fields(self) -> ModelSpec:
        if self.task == "controlnet" and (not self.control_type or not self.base_models):
            raise ValueError("a controlnet model needs 'control_type' and 'base_models'")
        if self.task == "ip_adapter" and (
            not self.base_models or not self.weight_name or not self.image_encoder
        ):
            raise ValueError("an ip_adapter model needs 'base_models', 'weight_name' and 'image_encoder'")
        if self.weight_name is not None and not self.weight_name.endswith(".safetensors"):
            raise ValueError(
                f"weight_name {self.weight_name!r} must be a .safetensors file (pickle weights can run code)"
            )
        if self.task != "controlnet" and self.control_type:
            raise ValueError("'control_type' applies to controlnet models only")
        if self.task not in ("controlnet", "ip_adapter", "lora") and self.base_models:
            raise ValueError("'base_models' applies to controlnet, ip_adapter and lora models only")
        if self.task == "lora" and not self.base_models:
            raise ValueError("a lora model needs 'base_models' (and 'weight_name' for a file in a repo)")
        backend = registered_backend(self.backend)
        if self.task not in backend.tasks:
            raise ValueError(
                f"a {self.backend} model's task must be one of {sorted(backend.tasks)}, not {self.task!r}"
            )
        if self.own_endpoint and not backend.hosted:
            raise ValueError(
                "'base_url', 'api_key_env', 'timeout' and 'headers' apply to hosted backends only"
            )
        if self.capabilities:
            from multimodal_mcp.capabilities import Capabilities

            Capabilities().merged(self.capabilities)  # unknown or ill-typed keys fail here
        return self

    @property
    def hosted(self) -> bool:
        """True for models run by a provider's API (no local weights, no device lane)."""
        return registered_backend(self.backend).hosted


class Limits(_Frozen):
    """Caps on what one call may ask for. Arguments beyond them get an error naming the limit."""

    max_side: int = Field(default=2048, ge=64, le=4096, description="Widest or tallest generated image (px).")
    max_pixels_per_call: int = Field(default=4 * 1024 * 1024, ge=4096, description="width*height*num_images")
    max_pixel_steps_per_call: int = Field(
        default=256 * 1024 * 1024,
        ge=4096,
        description="Compute budget of one generation call: width*height*steps*num_images.",
    )
    max_images: int = Field(default=4, ge=1, le=16, description="Images per generation call.")
    max_steps: int = Field(default=100, ge=1, le=200, description="Denoising steps per call.")
    max_input_pixels: int = Field(
        default=40_000_000,
        ge=4096,
        le=80_000_000,
        description="Decoded size cap for input images, read from the header before decoding; kept "
        "below Pillow's decompression-bomb limit (89 Mpx).",
    )
    max_input_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Encoded size cap for inputs."
    )
    max_input_aspect: float = Field(
        default=32.0,
        ge=2.0,
        le=1000.0,
        description="Longest-to-shortest side ratio of an input image, checked from the header: a "
        "1x100000 strip is tiny on disk but models scale its short side up to their input size.",
    )
    max_input_pixels_per_call: int = Field(
        default=80_000_000,
        ge=4096,
        description="Pixels of all input images one call decodes together; checked at each header.",
    )
    decode_memory_mib: int = Field(
        default=1024,
        ge=64,
        description="Decoded pixel memory (MiB) all concurrent decodes may hold at once; further "
        "decodes wait. One image over it is decoded alone.",
    )
    max_labels: int = Field(default=64, ge=2, le=256, description="Labels per clip_classify call.")
    max_prompt_chars: int = Field(
        default=4000, ge=16, le=4000, description="Characters in a prompt or negative prompt."
    )
    max_tokens: int = Field(
        default=1024, ge=1, le=8192, description="Tokens a describe_image answer may have."
    )


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
        description="Most bytes of one tool result, previews' base64 included (client_limits may lower it).",
    )
    limits: Limits = Limits()
    urls: UrlSettings = UrlSettings()
    pool: PoolSettings = PoolSettings()
    delivery: Delivery = Field(
        default="preview", description="How results carry images unless a call passes delivery."
    )
    client_limits: ClientLimitsPreset | ClientLimits = Field(
        default="generic",
        description="The client's limits on one result: a preset name or a table of ClientLimits fields.",
    )
    verification: VerificationSettings = VerificationSettings()

    def client_budget(self) -> ClientLimits:
        """The client's limits as numbers (a preset resolved)."""
        limits = self.client_limits
        return CLIENT_LIMITS[limits] if isinstance(limits, str) else limits

    http: HttpSettings = HttpSettings()
    store_fsync: bool = Field(
        default=True,
        description="fsync each image and its record before reporting it made (survives power loss).",
    )
    store: StoreSettings = StoreSettings()
    spending: SpendingSettings = SpendingSettings()
    safety: SafetySettings = SafetySettings()
    path_delivery: bool | None = Field(
        default=None,
        description="Allow delivery='path' (the stored PNG's local path in results). Default: on for stdio, "
        "off for HTTP, where clients do not share the server's disk and paths reveal its layout.",
    )


class Config(_Frozen):
    """The whole configuration."""

    profile: ProfileName
    server: ServerSettings
    models: dict[str, ModelSpec]
    defaults: dict[DefaultFor, str]
    hosted: HostedConfig = HostedConfig()
    profile_reasons: tuple[str, ...] = Field(
        default=(), description="Why the 'auto' profile picked what it did (empty for other profiles)."
    )

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
            if self.models[name].hosted:
                raise ValueError(f"server.pool.preload names {name!r}, a hosted model: nothing to load")
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


# --- reading config files and the built-in catalogs -------------------------------------------------

_TOP_LEVEL = ("profile", "server", "defaults", "models", "hosted")


def read_toml(text: str, where: str) -> dict[str, Any]:
    """Parse a config file's text and check its top-level keys: the user's file and the built-in
    catalogs alike (then both go through :class:`Config`'s validation in :func:`load_config`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from exc
    unknown = set(data) - set(_TOP_LEVEL)
    if unknown:
        raise ConfigError(
            f"{where}: unknown top-level keys {sorted(unknown)}; expected {', '.join(_TOP_LEVEL)}"
        )
    return data


def read_catalog(name: str) -> catalogs.Catalog:
    """The built-in catalog ``<name>.toml``'s models and defaults, read as a config file is."""
    where = f"built-in catalog {name}.toml"
    data = read_toml(catalogs.text(name), where)
    if set(data) - {"models", "defaults"}:
        raise ConfigError(f"{where}: a catalog holds [models] and [defaults] only")
    return data.get("models", {}), data.get("defaults", {})


def _profile(
    chosen: str, hosted: HostedConfig, gpu_probe: Callable[[], bool] | None
) -> tuple[dict[str, Any], dict[str, str], tuple[str, ...]]:
    if chosen != "auto":
        return (*catalogs.layered(read_catalog, catalogs.PROFILES[chosen]), ())
    try:
        return catalogs.auto_profile(read_catalog, hosted.for_backend, gpu_probe() if gpu_probe else False)
    except ValueError as exc:
        raise ConfigError(f"built-in catalogs: {exc}") from exc


def as_toml(config: Config) -> str:
    """``config``'s models and defaults as a config file that loads back to them (``models --as-toml``).

    The file lists every model, so any built-in profile whose models ``config`` has is a base it
    reproduces; ``config``'s own profile is taken when it is one (``auto`` started from one of them).
    """
    candidates = [config.profile] if config.profile in catalogs.PROFILES else list(catalogs.PROFILES)
    base = next(
        p
        for p in candidates
        if set(catalogs.layered(read_catalog, catalogs.PROFILES[p])[0]) <= set(config.models)
    )
    comments = [
        f"multimodal-mcp: the {config.profile!r} profile's models and defaults, as a config file (--config).",
        "Models here add to or replace the base profile's; [defaults] names each tool's model.",
        *(f"auto: {reason}" for reason in config.profile_reasons),
    ]
    models = {
        name: spec.model_dump(mode="json", exclude_defaults=True) for name, spec in config.models.items()
    }
    return catalogs.to_toml(base, models, {str(k): v for k, v in config.defaults.items()}, comments)


def _resolve_hosted(data: Mapping[str, Any], environ: Mapping[str, str], where: str) -> HostedConfig:
    """Read ``[hosted.*]`` (one table per registered hosted backend) and look each provider's key up
    in ``environ`` (unless the file sets one)."""
    from multimodal_mcp import registry

    hosted = registry.hosted_backends()
    unknown = set(data) - set(hosted)
    if unknown:
        raise ConfigError(
            f"{where}: unknown [hosted] tables {sorted(unknown)}; "
            f"hosted backends: {', '.join(sorted(hosted))}"
        )
    resolved: dict[str, HostedSettings] = {}
    for backend, plugin in hosted.items():
        table = dict(data.get(backend, {}))
        for field in ("key_from", "set_from", "problems"):
            if field in table:
                raise ConfigError(f"{where}: hosted.{backend}.{field} is set by the server, not the file")
        for field in sorted(set(table) & GOOGLE_CLOUD_SETTINGS - plugin.cloud_settings):
            takers = [n for n, b in hosted.items() if field in b.cloud_settings]
            raise ConfigError(
                f"{where}: hosted.{backend}.{field} is a Google Cloud setting; "
                f"it applies to {' and '.join(takers) or 'no registered backend'}"
            )
        defaults = plugin.default_settings().model_dump(exclude={"api_key", "key_from"})
        for field, variables in defaults.get("from_env", {}).items():
            if field in PROJECT_SETTINGS and not _on(table.get("vertexai", defaults.get("vertexai"))):
                continue  # GOOGLE_CLOUD_PROJECT and the like are not for the Gemini Developer API
            found = next(((v, environ[v].strip()) for v in variables if environ.get(v, "").strip()), None)
            if field not in table and found is not None:
                table[field] = found[1]
                table["set_from"] = {**table.get("set_from", {}), field: found[0]}
        settings = _hosted_settings(backend, {**defaults, **table}, where)
        if settings.api_key is not None and settings.api_key.get_secret_value():
            settings = settings.model_copy(update={"key_from": "config file"})
        else:
            for variable in (settings.api_key_env, *settings.api_key_env_fallbacks):
                value = environ.get(variable, "").strip()
                if value:
                    settings = settings.model_copy(update={"api_key": SecretStr(value), "key_from": variable})
                    break
            else:
                settings = settings.model_copy(update={"api_key": None, "key_from": None})
        try:
            resolved[backend] = plugin.complete(settings)
        except ValueError as exc:
            raise ConfigError(f"invalid configuration ({where}): {exc}") from None
    return HostedConfig(providers=resolved)


def _hosted_settings(backend: str, values: dict[str, Any], where: str) -> HostedSettings:
    """One ``[hosted.<backend>]`` table validated. A value read from the environment that is not valid
    is left out and kept in ``problems`` (an error only when a model uses the backend: a variable set
    for another program must not stop the server)."""
    problems: list[str] = []
    while True:
        try:
            settings = HostedSettings.model_validate(values)
            return settings.model_copy(update={"problems": tuple(problems)}) if problems else settings
        except ValidationError as exc:
            read_from: dict[str, str] = values.get("set_from", {})
            errors = exc.errors(include_input=False)
            said = [
                f"hosted.{backend}.{'.'.join(str(p) for p in err['loc'])}"
                + (f" (read from {read_from[err['loc'][0]]})" if err["loc"][0] in read_from else "")
                + f": {err['msg'].removeprefix('Value error, ')}"
                for err in errors
            ]
            if problems or not all(err["loc"][0] in read_from for err in errors):
                raise ConfigError(f"invalid configuration ({where}): {'; '.join(said)}") from None
            problems += said
            dropped = {str(err["loc"][0]) for err in errors}
            values = {k: v for k, v in values.items() if k not in dropped}
            values["set_from"] = {k: v for k, v in read_from.items() if k not in dropped}


def _on(value: object) -> bool:
    """Whether a setting's value (from the file, or a variable's text) reads as true."""
    try:
        return TypeAdapter(bool).validate_python(value)
    except ValidationError:
        return False


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
    static_tokens: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    gpu_probe: Callable[[], bool] | None = None,
    transport: Transport | None = None,
) -> Config:
    """Build the configuration from a profile, an optional TOML file, and explicit overrides.

    Args:
        profile: ``default``, ``tiny`` or ``auto`` (local models on a GPU, else hosted ones where keys
            are set, else ``tiny``: the rules are ``catalogs/auto.toml``). Overrides the file's
            ``profile`` key. Defaults to ``default``.
        config_file: A TOML file with optional ``profile``, ``[server]``, ``[defaults]``,
            ``[hosted.<backend>]`` and ``[models.<name>]`` tables. Models it names are added to (or
            replace) the profile's.
        cache_dir: The per-user cache directory; the store and tiny models live below it by default.
        home: The user's home directory (``~`` in paths expands to it).
        default_allowed_roots: Directories clients may read when the file sets no ``allowed_roots``
            (the CLI passes the home directory for stdio and nothing for HTTP); when not empty, the
            store directory is added to them.
        overrides: Keys of the ``[server]`` table set on the command line (e.g. ``store_dir``).
        static_tokens: More bearer tokens for ``[server.http.auth]``, principal -> token (the CLI
            reads them from ``MULTIMODAL_MCP_TOKENS``).
        environ: Where hosted providers' API keys are looked up (the CLI passes ``os.environ``;
            nothing else reads it). Keys end up in ``SecretStr`` fields only.
        gpu_probe: Says whether a CUDA GPU is present; called for the ``auto`` profile only (which
            uses local models if so). Without it, ``auto`` assumes no GPU.
        transport: How the server will be reached; resolves ``[server.safety] filter = "auto"``
            (on for ``http``, off for ``stdio``). ``None`` leaves it unresolved, which means off.

    Raises:
        ConfigError: with the file and the offending key in the message.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            text = config_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        data = read_toml(text, f"config file {config_file}")

    chosen = profile or data.get("profile") or "default"
    if chosen not in catalogs.PROFILE_CHOICES:
        raise ConfigError(f"unknown profile {chosen!r}; choose one of {sorted(catalogs.PROFILE_CHOICES)}")
    where = f"config file {config_file}" if config_file else f"profile {chosen!r}"
    hosted = _resolve_hosted(data.get("hosted", {}), environ or {}, where)
    base_models, base_tasks, reasons = _profile(chosen, hosted, gpu_probe)

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
    roots_chosen = "allowed_roots" in data.get("server", {}) or "allowed_roots" in (overrides or {})
    if default_allowed_roots and not roots_chosen:
        server["allowed_roots"].append(server["store_dir"])  # the defaults cover the store too
    if static_tokens:
        http = dict(server.get("http", {}))
        auth = dict(http.get("auth", {}))
        auth["tokens"] = [
            *auth.get("tokens", []),
            *({"principal": name, "token": token} for name, token in static_tokens.items()),
        ]
        http["auth"] = auth
        server["http"] = http
    if transport is not None and server.get("path_delivery") is None:
        server["path_delivery"] = transport == "stdio"
    safety = server.get("safety")
    if transport is not None and isinstance(safety, dict | None):
        safety = dict(safety or {})
        if safety.get("filter", "auto") == "auto":
            safety["filter"] = "on" if transport == "http" else "off"
        server["safety"] = safety

    try:
        config = Config.model_validate(
            {
                "profile": chosen,
                "server": server,
                "models": models,
                "defaults": tasks,
                "hosted": hosted,
                "profile_reasons": reasons,
            }
        )
        for name, spec in config.models.items():
            if spec.hosted and (invalid := hosted.for_backend(spec.backend).problems):
                raise ConfigError(f"invalid configuration ({where}): {invalid[0]} (model {name!r} uses it)")
        return config.model_copy(update={"hosted": resolve_endpoints(hosted, config.models, environ or {})})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors(include_input=False)
        )
        raise ConfigError(f"invalid configuration ({where}): {problems}") from exc
