"""Hosted models (OpenAI, Gemini): API clients shared by every tool, and what their calls return.

Hosted calls never touch the model pool's device lanes: they are network I/O on the event loop,
through each SDK's async client. One client per provider is created on first use (so a server with
no keys never imports an SDK) and closed at shutdown; a semaphore per provider caps the requests in
flight. The provider modules (``openai_backend``, ``gemini_backend``) are imported only when a
hosted model is used, and a missing SDK is an error naming the extra to install.
"""

from __future__ import annotations

import base64
import importlib
import io
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
from PIL import Image
from pydantic import BaseModel, Field

from multimodal_mcp.config import HostedConfig, HostedSettings, ModelSpec
from multimodal_mcp.errors import BackendError, InvalidArgument

logger = logging.getLogger(__name__)

Detail = Literal["low", "high", "auto"]
PROVIDER_NAMES = {"openai": "OpenAI", "gemini": "Gemini"}
_EXTRAS = {"openai": ("openai", "openai"), "gemini": ("google.genai", "gemini")}
_MODULES = {
    "openai": "multimodal_mcp.backends.openai_backend",
    "gemini": "multimodal_mcp.backends.gemini_backend",
}
MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""Largest encoded image sent to a provider (both cap inline images at about 20 MB)."""


class Usage(BaseModel):
    """What a hosted call consumed, as the provider reported it."""

    prompt_tokens: int | None = Field(description="Input tokens (text and images); null if not reported.")
    completion_tokens: int | None = Field(description="Output tokens; null if not reported.")
    images: int = Field(description="Images generated.")


@dataclass(frozen=True)
class HostedAnswer:
    text: str
    usage: Usage


@dataclass(frozen=True)
class HostedImages:
    images: list[Image.Image]
    usage: Usage
    sent: dict[str, Any] = field(default_factory=dict)
    """The generation parameters actually sent (size, quality, n, ...), recorded with the images."""
    revised_prompts: list[str | None] = field(default_factory=list)


class ChatModel(Protocol):
    """A hosted vision-language (chat) model."""

    async def answer(
        self,
        images: list[Image.Image],
        prompt: str,
        *,
        max_tokens: int,
        detail: Detail | None,
        schema: dict[str, Any] | None,
    ) -> HostedAnswer: ...

    async def complete(self, system: str, prompt: str, max_tokens: int) -> tuple[str, int]:
        """Text only: (answer, output tokens)."""
        ...


class ImageModel(Protocol):
    """A hosted image generation model."""

    async def generate(
        self, prompt: str, *, width: int | None, height: int | None, quality: str | None, n: int
    ) -> HostedImages: ...


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


class HostedClients:
    """The API clients for hosted models, created lazily (one per provider) and closed at shutdown."""

    def __init__(self, hosted: HostedConfig) -> None:
        self.settings = hosted
        self._clients: dict[str, Any] = {}
        self._limits: dict[str, anyio.Semaphore] = {}
        self.requests: dict[str, int] = {"openai": 0, "gemini": 0}

    def key_status(self, backend: str) -> str | None:
        """Where the provider's key comes from (a variable name or 'config file'), or None if unset."""
        return self.settings.for_backend(backend).key_from

    def limit(self, backend: str) -> anyio.Semaphore:
        semaphore = self._limits.get(backend)
        if semaphore is None:
            semaphore = self._limits[backend] = anyio.Semaphore(
                self.settings.for_backend(backend).max_concurrency
            )
        return semaphore

    def _module(self, backend: str) -> Any:
        sdk, extra = _EXTRAS[backend]
        try:
            importlib.import_module(sdk)
        except ImportError:
            raise BackendError(
                f"{PROVIDER_NAMES[backend]} models need the '{sdk}' package: "
                f"pip install 'multimodal-mcp[{extra}]'"
            ) from None
        return importlib.import_module(_MODULES[backend])

    def client(self, backend: str, model: str) -> Any:
        """The provider's async client; the error names the variable to set when there is no key."""
        settings = self.settings.for_backend(backend)
        if settings.api_key is None or not settings.api_key.get_secret_value():
            variables = " or ".join((settings.api_key_env, *settings.api_key_env_fallbacks))
            raise BackendError(
                f"model {model!r} needs {'an' if backend == 'openai' else 'a'} {PROVIDER_NAMES[backend]} "
                f"API key: set {variables} in the server's environment (or hosted.{backend}.api_key in "
                "its config file) and restart it"
            )
        existing = self._clients.get(backend)
        if existing is None:
            existing = self._clients[backend] = self._module(backend).make_client(settings)
            logger.info("created the %s client for %s", PROVIDER_NAMES[backend], settings.base_url)
        return existing

    def chat_model(self, name: str, spec: ModelSpec) -> ChatModel:
        client = self.client(spec.backend, name)
        module = self._module(spec.backend)
        model: ChatModel = module.ChatModel(self, client, name, spec)
        return model

    def image_model(self, name: str, spec: ModelSpec) -> Any:
        client = self.client(spec.backend, name)
        module = self._module(spec.backend)
        return module.ImageModel(self, client, name, spec)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for backend, client in clients.items():
            try:
                await self._module(backend).close_client(client)
            except Exception:
                logger.warning("closing the %s client failed", PROVIDER_NAMES[backend], exc_info=True)
