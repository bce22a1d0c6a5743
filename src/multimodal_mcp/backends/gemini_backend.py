"""Gemini models through ``google-genai``'s async client (``pip install multimodal-mcp[gemini]``).

The SDK is imported when the first client is made, not with this module.

``google-genai`` is Google's maintained SDK; the older ``google-generativeai`` is deprecated and
not used. Vision chat takes several images in one request (compare_images sends both), answers
in JSON against a schema on request, and the image model generates through ``generate_content``
with an image response modality. The SDK's own retries are off: this module retries 429/5xx,
timeouts and connection errors itself so that it can honour ``Retry-After`` (or the API's
``RetryInfo`` delay).
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar, TypeVar

import anyio
from PIL import Image

from multimodal_mcp.backends import vertex
from multimodal_mcp.backends.hosted import Connection, api_key, clean_message, png_bytes
from multimodal_mcp.capabilities import Capabilities, SizeRule
from multimodal_mcp.config import Config, HostedSettings, ModelSpec
from multimodal_mcp.errors import BackendError, ProviderError
from multimodal_mcp.handles import ChatAnswer, Detail, GeneratedImages, Handle, ImageRequest, Progress, Usage
from multimodal_mcp.hosted_settings import GOOGLE_CLOUD_SETTINGS
from multimodal_mcp.imaging.codec import decode_image
from multimodal_mcp.imaging.normalize import picture
from multimodal_mcp.registry import HostedBackend


def _sdk() -> Any:
    """google-genai's modules and the HTTP libraries it runs on: httpx2 in newer releases (httpx
    before), or aiohttp when that is installed. ``timeouts`` and ``unreachable`` are their exceptions
    for a request that took too long and one that found no server."""
    from google import genai
    from google.auth import exceptions as auth_errors
    from google.genai import errors, types

    try:
        import httpx2 as http
    except ImportError:  # pragma: no cover
        import httpx as http  # type: ignore[no-redef]
    timeouts: tuple[type[BaseException], ...] = (http.TimeoutException, TimeoutError)
    unreachable: tuple[type[BaseException], ...] = (http.TransportError,)
    try:
        import aiohttp

        unreachable += (aiohttp.ClientConnectionError,)
        timeouts += (aiohttp.ServerTimeoutError,)
    except ImportError:  # pragma: no cover
        pass
    return SimpleNamespace(
        genai=genai,
        errors=errors,
        types=types,
        auth_errors=auth_errors,
        timeouts=timeouts,
        unreachable=unreachable,
    )


logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_DELAY = 60.0
MAX_OUTPUT_PIXELS = 4096 * 4096
REFUSALS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_PROHIBITED_CONTENT",
    }
)
DEVELOPER_ENDPOINT = "https://generativelanguage.googleapis.com/"
MEDIA_RESOLUTION = {"low": "MEDIA_RESOLUTION_LOW", "high": "MEDIA_RESOLUTION_HIGH"}

# Gemini 2.5 Flash Image's output sizes per aspect ratio.
IMAGE_SIZES: dict[tuple[int, int], str] = {
    (1024, 1024): "1:1",
    (832, 1248): "2:3",
    (1248, 832): "3:2",
    (864, 1184): "3:4",
    (1184, 864): "4:3",
    (896, 1152): "4:5",
    (1152, 896): "5:4",
    (768, 1344): "9:16",
    (1344, 768): "16:9",
    (1536, 672): "21:9",
}


def _retry_delay(exc: Any, attempt: int) -> float:
    """Retry-After (seconds), else the API's RetryInfo delay ('20s'), else exponential backoff."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    if value:
        try:
            return min(max(float(value), 0.0), MAX_RETRY_DELAY)
        except ValueError:
            pass
    details = exc.details if isinstance(exc.details, dict) else {}
    error = details.get("error", details) if isinstance(details.get("error", details), dict) else {}
    for item in error.get("details") or []:
        if isinstance(item, dict) and str(item.get("@type", "")).endswith("RetryInfo"):
            match = re.fullmatch(r"\s*([0-9.]+)s\s*", str(item.get("retryDelay", "")))
            if match:
                return min(float(match.group(1)), MAX_RETRY_DELAY)
    return float(min(0.5 * 2**attempt, 8.0))


def _capabilities(spec: ModelSpec) -> Capabilities:
    if spec.task == "text_to_image":
        return Capabilities(
            sizes=SizeRule(fixed=tuple(IMAGE_SIZES), labels=tuple(IMAGE_SIZES.values())), max_images=16
        )
    if spec.task == "vlm":
        return Capabilities(
            images_per_request=16, detail_levels=("low", "high", "auto"), structured_output="native"
        )
    return Capabilities()


class _Calls:
    def __init__(self, connection: Connection, name: str, spec: ModelSpec) -> None:
        self.connection = connection
        self.name = name
        self.spec = spec
        self.settings = connection.settings
        self.capabilities = _capabilities(spec).merged(spec.capabilities)

    @property
    def title(self) -> str:
        """Who answers, for messages: Gemini, or the server a model's base_url names."""
        title = self.connection.title
        return title[:1].upper() + title[1:]

    async def call(self, request: Callable[[Any], Awaitable[T]]) -> T:
        """``request(client)`` with retries (honouring Retry-After), its failures as curated errors."""
        client = self.connection.client(self.name)  # first: it names the extra when the SDK is missing
        sdk = _sdk()
        errors = sdk.errors
        attempts = self.settings.max_retries + 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                return await self.connection.call(lambda: request(client))
            except errors.APIError as exc:
                if exc.code in RETRY_STATUS and not last:
                    await anyio.sleep(_retry_delay(exc, attempt))
                    continue
                raise self._api_error(exc) from None
            except sdk.timeouts:  # (asyncio's TimeoutError: aiohttp's total timeout)
                if not last:
                    continue
                raise ProviderError(
                    f"{self.title} did not answer model {self.name!r} within "
                    f"{self.settings.timeout_seconds:g} s (tried {attempts} time(s)); try again later, "
                    f"or raise {self.connection.setting(self.name, 'timeout_seconds')}"
                ) from None
            except sdk.unreachable:
                if not last:
                    await anyio.sleep(min(0.5 * 2**attempt, 8.0))
                    continue
                raise ProviderError(
                    f"could not reach {self.connection.place} for model {self.name!r} "
                    f"(tried {attempts} time(s)); check the network or "
                    f"{self.connection.setting(self.name, 'base_url')}"
                ) from None
            except sdk.auth_errors.GoogleAuthError as exc:
                raise self._auth_error(exc) from None
            except (ValueError, KeyError, TypeError, errors.UnknownApiResponseError):
                raise self.malformed("a response that does not match the API's format") from None
        raise AssertionError("unreachable")

    def _auth_error(self, exc: Exception) -> Exception:
        """google-auth's failures to get an access token (project access on Vertex AI), in plain words."""
        logger.warning("%s: no access token for model %r: %s", self.title, self.name, exc)
        auth_errors = _sdk().auth_errors
        if isinstance(exc, auth_errors.DefaultCredentialsError):
            return BackendError(
                f"model {self.name!r} on {self.title} (project {self.settings.project!r}) found no "
                "application default credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
                "JSON key file, or run 'gcloud auth application-default login' on the server's machine, "
                "and restart the server"
            )
        if isinstance(exc, auth_errors.RefreshError):
            said = clean_message(exc.args[0] if exc.args else exc, self.settings, limit=200)
            return ProviderError(
                f"Google's token endpoint refused the credentials of model {self.name!r} ({said}); check "
                "that the service-account key or gcloud login is still valid"
            )
        return ProviderError(
            f"could not get an access token from Google for model {self.name!r} (the token endpoint did "
            "not answer); check the network, then try again"
        )

    def _api_error(self, exc: Any) -> Exception:
        message = clean_message(exc.message or exc.status or "", self.settings)
        if exc.code in (401, 403) and self.settings.project is not None:
            return ProviderError(
                f"{self.title} refused access (HTTP {exc.code}) for model {self.name!r} in project "
                f"{self.settings.project!r}: {message}. Check that the credentials' account has the "
                "Vertex AI User role there and that the Vertex AI API is enabled"
            )
        if exc.code in (401, 403) or (exc.code == 400 and "api key" in message.lower()):
            return ProviderError(
                f"{self.title} rejected the API key or refused access (HTTP {exc.code}) for model "
                f"{self.name!r}; "
                f"check {self.settings.key_from or self.settings.api_key_env} and the project's access"
            )
        return self.connection.status_error(self.name, int(exc.code), message)

    def malformed(self, what: str) -> ProviderError:
        return self.connection.malformed(self.name, what)

    def check_refusal(self, response: Any) -> None:
        """Raise the provider's refusal, in its words, if the prompt or the answer was blocked."""
        feedback = getattr(response, "prompt_feedback", None)
        reason = getattr(feedback, "block_reason", None)
        if reason:
            said = clean_message(getattr(feedback, "block_reason_message", None) or "", self.settings)
            raise ProviderError(
                f"{self.title} refused the request: the prompt was blocked ({_name(reason)})"
                + (f": {said}" if said else "")
            )
        candidates = getattr(response, "candidates", None) or []
        if not candidates:
            raise self.malformed("a response without candidates")
        finish = _name(getattr(candidates[0], "finish_reason", None))
        if finish in REFUSALS:
            said = clean_message(getattr(candidates[0], "finish_message", None) or "", self.settings)
            raise ProviderError(
                f"{self.title} refused the request: the answer was stopped ({finish})"
                + (f": {said}" if said else "")
            )

    def usage(self, response: Any, images: int) -> Usage:
        meta = getattr(response, "usage_metadata", None)
        return Usage(
            prompt_tokens=getattr(meta, "prompt_token_count", None),
            completion_tokens=getattr(meta, "candidates_token_count", None),
            images=images,
        )

    def parts(self, response: Any) -> list[Any]:
        content = getattr(response.candidates[0], "content", None)
        return list(getattr(content, "parts", None) or [])


def _name(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


def _image_part(image: Image.Image) -> Any:
    return _sdk().types.Part.from_bytes(data=png_bytes(picture(image)), mime_type="image/png")


class GeminiChat(_Calls):
    """Gemini answering about one or several images (all in one request), or text alone."""

    async def _generate(self, contents: list[Any], config: Any) -> ChatAnswer:
        response = await self.call(
            lambda client: client.models.generate_content(
                model=self.spec.source, contents=contents, config=config
            )
        )
        self.check_refusal(response)
        text = "".join(
            p.text
            for p in self.parts(response)
            if isinstance(getattr(p, "text", None), str) and not p.thought
        )
        if not text:
            raise self.malformed("a response without text")
        usage = self.usage(response, 0)
        return ChatAnswer(text.strip(), usage.completion_tokens or 0, usage)

    async def answer(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        *,
        max_tokens: int,
        detail: Detail | None = None,
        schema: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> ChatAnswer:
        types = _sdk().types
        config = types.GenerateContentConfig(max_output_tokens=max_tokens)
        if detail in MEDIA_RESOLUTION:
            config.media_resolution = types.MediaResolution(MEDIA_RESOLUTION[detail])
        if schema is not None:
            config.response_mime_type = "application/json"
            config.response_json_schema = dict(schema)
        contents: list[Any] = [prompt, *(_image_part(image) for image in images)]
        return await self._generate(contents, config)

    async def complete(
        self, system: str, prompt: str, *, max_tokens: int, progress: Progress | None = None
    ) -> ChatAnswer:
        config = _sdk().types.GenerateContentConfig(max_output_tokens=max_tokens, system_instruction=system)
        return await self._generate([prompt], config)


class GeminiImageGenerator(_Calls):
    """Gemini's image model: ``generate_content`` with an image response modality, one image a request."""

    async def _one(self, prompt: str, config: Any) -> tuple[Image.Image, Usage]:
        response = await self.call(
            lambda client: client.models.generate_content(
                model=self.spec.source, contents=[prompt], config=config
            )
        )
        self.check_refusal(response)
        image, text = None, []
        for part in self.parts(response):
            inline = getattr(part, "inline_data", None)
            if inline is not None and image is None:
                data = inline.data
                if isinstance(data, str):
                    data = base64.b64decode(data)
                try:
                    image = decode_image(data or b"", max_pixels=MAX_OUTPUT_PIXELS).image.convert("RGB")
                except Exception:
                    raise self.malformed("image data that is not a readable image") from None
            elif isinstance(getattr(part, "text", None), str):
                text.append(part.text)
        if image is None:
            said = clean_message(" ".join(text), self.settings)
            raise ProviderError(
                f"{self.title} returned no image for model {self.name!r}"
                + (f"; it said: {said}" if said else "")
            )
        return image, self.usage(response, 1)

    async def generate(self, request: ImageRequest, *, progress: Progress | None = None) -> GeneratedImages:
        types = _sdk().types
        size = (request.width, request.height) if request.width and request.height else (1024, 1024)
        ratio = IMAGE_SIZES[size]
        config = types.GenerateContentConfig(
            response_modalities=["IMAGE"], image_config=types.ImageConfig(aspect_ratio=ratio)
        )
        prompt, n = request.prompt, request.num_images
        results: list[tuple[Image.Image, Usage] | None] = [None] * n

        async def one(i: int) -> None:
            results[i] = await self._one(prompt, config)

        try:
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)
        except BaseExceptionGroup as group:  # the first failure cancels the others; report it alone
            raise group.exceptions[0] from None
        done = [r for r in results if r is not None]
        usage = Usage(
            prompt_tokens=_sum(u.prompt_tokens for _, u in done),
            completion_tokens=_sum(u.completion_tokens for _, u in done),
            images=len(done),
        )
        sent = {"aspect_ratio": ratio, "n": n}
        return GeneratedImages([img for img, _ in done], usage, sent, [None] * len(done))


def _http_options(settings: HostedSettings) -> Any:
    types = _sdk().types
    return types.HttpOptions(
        base_url=settings.base_url,
        headers=settings.headers or None,
        timeout=math.ceil(settings.timeout_seconds * 1000),
        retry_options=types.HttpRetryOptions(attempts=1),  # retried here, honouring Retry-After
    )


def _sum(values: Any) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


class GeminiBackend(HostedBackend):
    """Google's Gemini API through google-genai."""

    title = "Gemini"
    tasks = frozenset({"text_to_image", "vlm", "text"})
    sdk = "google.genai"
    extra = "gemini"
    cloud_settings = GOOGLE_CLOUD_SETTINGS
    always_vertex: ClassVar[bool] = False
    """True for the backend that always speaks Vertex AI (``vertex_ai``); ``gemini`` does when its
    ``vertexai`` setting is on (``GOOGLE_GENAI_USE_VERTEXAI``, as google-genai reads it)."""

    def default_settings(self) -> HostedSettings:
        return HostedSettings(
            api_key_env="GEMINI_API_KEY",
            api_key_env_fallbacks=("GOOGLE_API_KEY",),
            base_url=DEVELOPER_ENDPOINT,
            from_env={"vertexai": ("GOOGLE_GENAI_USE_VERTEXAI",), **vertex.CLOUD_ENV},
        )

    def complete(self, settings: HostedSettings) -> HostedSettings:
        """On Vertex AI: the location and endpoint a project or a key implies (see
        :func:`vertex.complete`). Else a project, location or credentials file (set in the file: the
        environment's are not read for the Gemini Developer API) is refused."""
        if settings.vertexai:
            return vertex.complete(settings, self.default_settings().base_url)
        for field in sorted(vertex.PROJECT_SETTINGS):
            if getattr(settings, field) is not None:
                raise ValueError(
                    f"hosted.{self.name}.{field} applies on Vertex AI only: set vertexai = true in "
                    f'[hosted.{self.name}] (or GOOGLE_GENAI_USE_VERTEXAI=true), or use backend = "vertex_ai"'
                )
        return settings

    def missing_credentials(self, connection: Connection, model: str) -> str | None:
        if not connection.settings.vertexai or not connection.needs_key:  # (a keyless endpoint of its own)
            return connection.missing_key(model)
        return vertex.missing_credentials(connection.settings, model, self.name)

    def key_status(self, settings: HostedSettings) -> str:
        if not settings.vertexai or (settings.project is None and not settings.api_key_env):
            return super().key_status(settings)  # (the Gemini Developer API, or a keyless endpoint)
        return vertex.key_status(settings, "" if self.always_vertex else "on Vertex AI, ")

    def make_client(self, settings: HostedSettings) -> Any:
        genai = _sdk().genai
        if settings.vertexai and settings.project is not None:  # project access, a bearer token
            client = genai.Client(
                vertexai=True,
                project=settings.project,
                location=settings.location,
                credentials=vertex.credentials_from_file(settings, self.name),
                http_options=_http_options(settings),
            )
        else:  # the Gemini Developer API, or Vertex AI's express mode: an API key
            client = genai.Client(
                api_key=api_key(settings), vertexai=settings.vertexai, http_options=_http_options(settings)
            )
        return client.aio

    async def close_client(self, client: Any) -> None:
        await client.aclose()

    def capabilities(self, name: str, spec: ModelSpec, config: Config) -> Capabilities:
        return _capabilities(spec)

    def handle(self, name: str, spec: ModelSpec, connection: Connection) -> Handle:
        if spec.task == "text_to_image":
            return GeminiImageGenerator(connection, name, spec)
        return GeminiChat(connection, name, spec)


backend = GeminiBackend()


class VertexBackend(GeminiBackend):
    """Gemini models on Vertex AI (google-genai's ``vertexai=True``), in one of its two modes:

    - **project access**: a Google Cloud project and location (``GOOGLE_CLOUD_PROJECT``,
      ``GOOGLE_CLOUD_LOCATION``, or ``project``/``location`` in ``[hosted.vertex_ai]``) with
      application default credentials: the JSON file ``GOOGLE_APPLICATION_CREDENTIALS`` (or
      ``credentials_file``) names, else gcloud's login or the metadata server, found by google-auth
      at the first call. Requests carry an OAuth bearer token, never an API key.
    - **express mode**: an API key bound to a project, from ``GOOGLE_API_KEY``, when no project is set.

    A project wins over a key, as in google-genai. (``backend = "gemini"`` does the same with
    ``GOOGLE_GENAI_USE_VERTEXAI=true``.)
    """

    title = "Vertex AI"
    always_vertex = True
    cloud_settings = GOOGLE_CLOUD_SETTINGS - {"vertexai"}

    def default_settings(self) -> HostedSettings:
        return HostedSettings(
            api_key_env="GOOGLE_API_KEY",
            base_url=vertex.GLOBAL_ENDPOINT,
            vertexai=True,
            from_env=vertex.CLOUD_ENV,
        )


vertex_backend = VertexBackend()
