"""Hosted providers' settings: ``[hosted.<backend>]`` tables and the endpoints models name themselves.

Part of the configuration (:mod:`multimodal_mcp.config` re-exports these names and reads the tables);
kept apart because each hosted backend brings settings of its own. Keys and credentials are resolved
by :func:`multimodal_mcp.config.load_config` from the environment mapping it is given; nothing here
reads the environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

if TYPE_CHECKING:
    from multimodal_mcp.config import ModelSpec


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def registered_backend(name: str) -> Any:
    """The registered backend ``name`` (imported here: the registry sits above the configuration).

    Raises:
        ValueError: no backend is registered under that name (the message lists those that are).
    """
    from multimodal_mcp import registry

    try:
        return registry.get(name)
    except registry.UnknownBackend as exc:
        raise ValueError(str(exc)) from None


class HostedSettings(_Frozen):
    """One hosted provider: where its API key comes from, where requests go, and how they are retried.

    The key itself is resolved once by :func:`load_config` (from ``api_key`` in the file or the
    environment mapping it is given) and kept in a ``SecretStr``: never logged, stored or returned.
    """

    api_key_env: str = Field(description="The environment variable holding the API key.")
    api_key_env_fallbacks: tuple[str, ...] = Field(
        default=(), description="Further variables tried in order when api_key_env is unset."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="The key itself (discouraged in a file: prefer the environment variable).",
    )
    key_from: str | None = Field(
        default=None,
        description="Where the key came from (a variable name or 'config file'); set by load_config.",
    )
    base_url: str = Field(description="The API's base URL (a proxy or compatible server may go here).")
    timeout_seconds: float = Field(default=120, gt=0, le=3600, description="Per request, per attempt.")
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries on rate limits (429), 5xx and connection errors."
    )
    max_concurrency: int = Field(
        default=4, ge=1, le=256, description="Requests to this provider in flight at once."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers on every request.")
    api_version: str | None = Field(
        default=None, description="The API version a provider wants with each request, where it asks for one."
    )
    from_env: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Settings read from environment variables (first one set) when the file does not set "
        "them, following the SDK's own conventions (a base URL variable, an API version variable).",
    )
    set_from: dict[str, str] = Field(
        default_factory=dict,
        description="The environment variable each setting of from_env was read from; set by load_config.",
    )
    own_endpoint: bool = Field(default=False, description="A model's own endpoint; set by load_config.")
    problems: tuple[str, ...] = Field(
        default=(),
        description="Values read from the environment that are not valid (left out); set by load_config, "
        "an error when a model uses the backend.",
    )
    vertexai: bool = Field(
        default=False,
        description="Google Cloud: speak Vertex AI rather than the Gemini Developer API (as google-genai "
        "does with GOOGLE_GENAI_USE_VERTEXAI=true); always on for vertex_ai.",
    )
    project: str | None = Field(
        default=None,
        description="Google Cloud: the project Vertex AI requests bill to and run in (project access "
        "with application default credentials instead of an API key).",
    )
    location: str | None = Field(
        default=None,
        description="Google Cloud: the Vertex AI region ('us-central1', 'europe-west4') or 'global' "
        "(the default); it picks the regional endpoint unless base_url is set.",
    )
    credentials_file: str | None = Field(
        default=None,
        description="Google Cloud: a credentials JSON file (a service-account key, gcloud's "
        "application_default_credentials.json); default: application default credentials.",
    )

    @field_validator("project")
    @classmethod
    def _a_project_id(cls, value: str | None) -> str | None:
        if value is not None and not _PROJECT.fullmatch(value):
            raise ValueError(
                f"{value[:80]!r} is not a Google Cloud project ID: 6 to 63 lowercase letters, digits, "
                "'-' (and 'example.com:' before a domain-scoped one), e.g. 'my-project-123'"
            )
        return value

    @field_validator("location")
    @classmethod
    def _a_location(cls, value: str | None) -> str | None:
        if value is not None and not _LOCATION.fullmatch(value):
            raise ValueError(
                f"{value[:80]!r} is not a Google Cloud location: a region such as 'us-central1' or "
                "'europe-west4', a multi-region ('us', 'eu'), or 'global'"
            )
        return value


PROJECT_SETTINGS = frozenset({"project", "location", "credentials_file"})
"""Vertex AI's project access: read from the environment (``from_env``) only when ``vertexai`` is on."""
GOOGLE_CLOUD_SETTINGS = PROJECT_SETTINGS | {"vertexai"}
"""Settings only the backends that declare them (``HostedBackend.cloud_settings``) read."""
_PROJECT = re.compile(r"(?:[a-z0-9.-]{1,63}:)?[a-z][a-z0-9-]{4,61}[a-z0-9]")
_LOCATION = re.compile(r"[a-z][a-z0-9-]{0,40}[a-z0-9]")


class HostedConfig(_Frozen):
    """``[hosted.<backend>]``: one table of settings per registered hosted backend, keys resolved;
    ``endpoints``: the settings of each model that names its own endpoint."""

    providers: dict[str, HostedSettings] = Field(default_factory=dict)
    endpoints: dict[str, HostedSettings] = Field(default_factory=dict)

    def for_backend(self, backend: str) -> HostedSettings:
        """The settings of hosted backend ``backend`` (its defaults when the file has no table)."""
        settings = self.providers.get(backend)
        if settings is None:
            settings = registered_backend(backend).default_settings()
        return settings

    def for_model(self, name: str, spec: ModelSpec) -> HostedSettings:
        """Where model ``name``'s requests go: its own endpoint, else its backend's settings."""
        return self.endpoints.get(name) or self.for_backend(spec.backend)


def resolve_endpoints(
    hosted: HostedConfig, models: Mapping[str, ModelSpec], environ: Mapping[str, str]
) -> HostedConfig:
    """Resolve each model's own endpoint (base_url, api_key_env, timeout, headers) over its backend's
    settings. With base_url and no api_key_env the model sends no key: the provider's key never goes
    to another server."""
    endpoints: dict[str, HostedSettings] = {}
    for name, spec in models.items():
        if not (spec.hosted and spec.own_endpoint):
            continue
        base = hosted.for_backend(spec.backend)
        update: dict[str, Any] = {"own_endpoint": True, "headers": {**base.headers, **spec.headers}}
        if spec.base_url is not None or spec.api_key_env is not None:
            variable = spec.api_key_env or ""
            value = environ.get(variable, "").strip() if variable else ""
            update.update(
                api_key_env=variable, api_key_env_fallbacks=(), api_key=SecretStr(value) if value else None
            )
            update.update(base_url=spec.base_url or base.base_url, key_from=variable if value else None)
        if spec.timeout is not None:
            update["timeout_seconds"] = spec.timeout
        endpoints[name] = base.model_copy(update=update)
    return hosted.model_copy(update={"endpoints": endpoints})
