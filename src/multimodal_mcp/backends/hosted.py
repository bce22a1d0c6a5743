"""Hosted models: one connection per endpoint (a provider backend's own, or one a model names with
``base_url``), shared by every handle of the models it serves.

Hosted calls never touch the model pool's device lanes: they are network I/O on the event loop,
through each SDK's async client. A :class:`Connection` per endpoint creates its client on first
use (so a server with no keys never imports an SDK) and closes it at shutdown; its semaphore caps
the requests in flight. A missing SDK is an error naming the extra to install; a missing key names
the environment variables to set.
"""

from __future__ import annotations

import base64
import importlib
import io
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from PIL import Image

from multimodal_mcp.config import HostedConfig, HostedSettings
from multimodal_mcp.errors import BackendError, Busy, InvalidArgument, MultimodalError, ProviderError
from multimodal_mcp.handles import Detail, Usage
from multimodal_mcp.registry import HostedBackend

logger = logging.getLogger(__name__)

T = TypeVar("T")
__all__ = [
    "NO_KEY",
    "Connection",
    "Detail",
    "HostedConnections",
    "Usage",
    "api_key",
    "clean_message",
    "data_uri",
    "endpoint_key",
    "png_bytes",
]
NO_KEY = "no-key"
"""Sent as the key to an endpoint configured without one: the SDKs insist on a key, and local servers
(Ollama, LM Studio, llama.cpp's) ignore it. The provider's real key never goes there."""
MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Largest encoded image sent to a provider (the major ones cap inline images at about 20 MB)."""


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    data = buf.getvalue()
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidArgument(
            f"an image is {len(data)} bytes as PNG; hosted models take at most {MAX_IMAGE_BYTES} per image. "
            "Downscale it first."
        )
    return data


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


_LONG_TOKEN = re.compile(r"[A-Za-z0-9+/=_\-]{80,}")


def clean_message(message: object, settings: HostedSettings, limit: int = 400) -> str:
    """A provider's message made safe to show: no key, no long base64 runs, bounded length."""
    text = " ".join(str(message or "").split())
    if settings.api_key is not None:
        secret = settings.api_key.get_secret_value()
        if secret:
            text = text.replace(secret, "[key]")
    text = _LONG_TOKEN.sub("[...]", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def api_key(settings: HostedSettings) -> str:
    """The key to hand an SDK: the resolved one, or :data:`NO_KEY` for a keyless endpoint."""
    return settings.api_key.get_secret_value() if settings.api_key is not None else NO_KEY


class Connection:
    """One endpoint's client, concurrency limit and settings, shared by the handles of its models."""

    def __init__(self, backend: HostedBackend, settings: HostedSettings) -> None:
        self.backend = backend
        self.settings = settings
        self.requests = 0
        """Requests sent (retries included where the backend retries itself)."""
        self._client: Any = None
        self._limit = anyio.Semaphore(settings.max_concurrency)

    @property
    def has_client(self) -> bool:
        return self._client is not None

    @property
    def title(self) -> str:
        """How messages name who answers: the provider, or 'the server at <base_url>' for a model's
        own endpoint (never a provider's name for a server that is not the provider's)."""
        if self.settings.own_endpoint and self.settings.base_url != self.backend.default_settings().base_url:
            return f"the server at {self.settings.base_url}"
        return self.backend.title or self.backend.name

    @property
    def place(self) -> str:
        """Who answers and where, mid-sentence: 'OpenAI at <base_url>' or 'the server at <base_url>'."""
        title = self.title
        return title if self.settings.base_url in title else f"{title} at {self.settings.base_url}"

    @property
    def needs_key(self) -> bool:
        """False for an endpoint configured without a key (a model's base_url and no api_key_env)."""
        return bool(self.settings.api_key_env)

    def setting(self, model: str, field: str) -> str:
        """The config key that sets ``field`` for ``model``: its own table's, or the backend's."""
        own = self.settings.own_endpoint and field in ("base_url", "timeout_seconds")
        return (
            f"models.{model}.{field.replace('_seconds', '')}"
            if own
            else f"hosted.{self.backend.name}.{field}"
        )

    def missing_key(self, model: str) -> str | None:
        """The error for a request without the API key this endpoint needs, naming the variables to set
        (``None`` when the key is there or none is needed)."""
        settings = self.settings
        if not self.needs_key or (settings.api_key is not None and settings.api_key.get_secret_value()):
            return None
        variables = " or ".join((settings.api_key_env, *settings.api_key_env_fallbacks))
        if settings.own_endpoint:
            needs, where = f"an API key for {self.title}", f"models.{model}.api_key_env"
        else:
            article = "an" if self.title[:1].lower() in "aeiou" else "a"
            needs = f"{article} {self.title} API key"
            where = f"hosted.{self.backend.name}.api_key in its config file"
        return (
            f"model {model!r} needs {needs}: set {variables} in the server's "
            f"environment (or {where}) and restart it"
        )

    def client(self, model: str) -> Any:
        """The provider's client, created on first use.

        Raises:
            BackendError: the SDK is not installed (names the extra), or no API key or other credentials
                are set (names the variables to set).
        """
        if self._client is None:
            settings = self.settings
            problem = self.backend.missing_credentials(self, model)
            if problem is not None:
                raise BackendError(problem)
            sdk = self.backend.sdk
            if sdk is not None:
                try:
                    importlib.import_module(sdk)
                except ImportError:
                    extra = self.backend.extra or self.backend.name
                    raise BackendError(
                        f"model {model!r} needs the '{sdk}' package: pip install 'multimodal-mcp[{extra}]'"
                    ) from None
            self._client = self.backend.make_client(settings)
            logger.info("created the %s client for %s", self.title, settings.base_url)
        return self._client

    def status_error(self, model: str, status: int, message: str) -> MultimodalError:
        """The curated error for an HTTP status the provider still answered after its retries
        (``message`` already cleaned with :func:`clean_message`)."""
        retries = self.settings.max_retries
        if status == 429:
            return Busy(
                f"{self.title} is rate-limiting model {model!r} (HTTP 429 after {retries} retries): "
                f"{message}. Try again in a minute."
            )
        if status >= 500:
            return ProviderError(
                f"{self.title} failed (HTTP {status}) for model {model!r} after {retries} retries: "
                f"{message}. Try again later."
            )
        return ProviderError(f"{self.title} rejected the request (HTTP {status}): {message}")

    def malformed(self, model: str, what: str) -> ProviderError:
        """The error for an answer that is not what the API promises."""
        return ProviderError(
            f"{self.title} sent {what} for model {model!r}; try again, or check "
            f"{self.setting(model, 'base_url')}"
        )

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Run one request under the backend's concurrency limit."""
        async with self._limit:
            self.requests += 1
            return await request()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await self.backend.close_client(client)
            except Exception:
                logger.warning("closing the %s client failed", self.title, exc_info=True)


def endpoint_key(backend: str, settings: HostedSettings) -> str:
    """What one connection serves: the backend's name, or ``backend@base_url`` for a model's own
    endpoint (with a ``#n`` suffix when models share a URL but differ in key, timeout or headers)."""
    return f"{backend}@{settings.base_url}" if settings.own_endpoint else backend


class HostedConnections:
    """The connections of every hosted endpoint, created on first use and closed at shutdown: one per
    hosted backend's own settings, and one per distinct endpoint that models name for themselves
    (models with the same base_url, key, timeout and headers share it)."""

    def __init__(self, hosted: HostedConfig) -> None:
        self.settings = hosted
        self._connections: dict[str, Connection] = {}

    def connection(self, backend: HostedBackend, settings: HostedSettings | None = None) -> Connection:
        """The connection for ``settings`` (default: the backend's own)."""
        settings = settings if settings is not None else self.settings.for_backend(backend.name)
        key = endpoint_key(backend.name, settings)
        n = 1
        while (found := self._connections.get(key)) is not None and found.settings != settings:
            n += 1
            key = f"{endpoint_key(backend.name, settings)}#{n}"
        if found is None:
            found = self._connections[key] = Connection(backend, settings)
        return found

    def open_clients(self) -> list[str]:
        """The endpoints whose client is open now (see :func:`endpoint_key`)."""
        return [name for name, c in self._connections.items() if c.has_client]

    @property
    def requests(self) -> dict[str, int]:
        """Requests sent per endpoint (see :func:`endpoint_key`)."""
        return {name: c.requests for name, c in self._connections.items()}

    async def aclose(self) -> None:
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            await connection.aclose()
