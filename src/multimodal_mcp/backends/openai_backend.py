"""OpenAI models through the official ``openai`` SDK's async client (``pip install multimodal-mcp[openai]``).

Image generation (GPT Image, DALL-E 3, DALL-E 2), edits with reference images and masks (GPT Image),
and vision chat (GPT-4o class) for describing and comparing images, and text chat for prompt
rewriting. Images travel as base64: ``b64_json`` in, data URIs out. Retries on 429/5xx and connection
errors are the SDK's (``max_retries``, honouring ``Retry-After``); every failure becomes a message for
the agent. The SDK is imported when the first client is made, not with this module.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image

from multimodal_mcp.backends.hosted import Connection, api_key, clean_message, data_uri, png_bytes
from multimodal_mcp.capabilities import Capabilities, SizeRule
from multimodal_mcp.config import Config, HostedSettings, ModelSpec
from multimodal_mcp.errors import BackendError, ProviderError
from multimodal_mcp.handles import (
    ChatAnswer,
    Detail,
    GeneratedImages,
    Handle,
    ImageRequest,
    Progress,
    Usage,
)
from multimodal_mcp.imaging.codec import decode_image
from multimodal_mcp.imaging.normalize import picture
from multimodal_mcp.registry import HostedBackend

T = TypeVar("T")
REFUSAL_CODES = frozenset({"content_policy_violation", "moderation_blocked", "content_filter"})
MAX_OUTPUT_PIXELS = 4096 * 4096
MAX_EDIT_IMAGES = 16
"""GPT Image edits take up to 16 input pictures."""


@dataclass(frozen=True)
class ImageFamily:
    """What one family of OpenAI image models accepts."""

    sizes: tuple[tuple[int, int], ...]
    max_n: int
    qualities: tuple[str, ...]
    default_quality: str | None
    edits: bool
    wants_response_format: bool


GPT_IMAGE = ImageFamily(
    sizes=((1024, 1024), (1536, 1024), (1024, 1536)),
    max_n=10,
    qualities=("auto", "low", "medium", "high"),
    default_quality="auto",
    edits=True,
    wants_response_format=False,  # GPT Image models always return b64_json
)
DALL_E_3 = ImageFamily(
    sizes=((1024, 1024), (1792, 1024), (1024, 1792)),
    max_n=1,
    qualities=("standard", "hd"),
    default_quality="standard",
    edits=False,
    wants_response_format=True,
)
DALL_E_2 = ImageFamily(
    sizes=((256, 256), (512, 512), (1024, 1024)),
    max_n=10,
    qualities=("standard",),
    default_quality=None,
    edits=False,
    wants_response_format=True,
)


def image_family(source: str) -> ImageFamily:
    if source.startswith("dall-e-3"):
        return DALL_E_3
    if source.startswith("dall-e-2"):
        return DALL_E_2
    return GPT_IMAGE


def _capabilities(spec: ModelSpec) -> Capabilities:
    if spec.task == "text_to_image":
        family = image_family(spec.source)
        return Capabilities(
            sizes=SizeRule(fixed=family.sizes),
            max_images=family.max_n,
            qualities=family.qualities,
            edit_modes=("img2img", "inpaint") if family.edits else (),
            reference_images=MAX_EDIT_IMAGES - 1 if family.edits else 0,
        )
    if spec.task == "vlm":
        return Capabilities(
            images_per_request=MAX_EDIT_IMAGES,
            detail_levels=("low", "high", "auto"),
            structured_output="native",
            # Chat completions return log-probabilities (reasoning models do not: set
            # capabilities = { yes_probability = false } for those).
            yes_probability=True,
        )
    return Capabilities()


class _Calls:
    """Requests through the connection, and the translation of the SDK's errors."""

    def __init__(self, connection: Connection, name: str, spec: ModelSpec) -> None:
        self.connection = connection
        self.name = name
        self.spec = spec
        self.settings = connection.settings
        self.capabilities = _capabilities(spec).merged(spec.capabilities)

    @property
    def title(self) -> str:
        """Who answers, for messages: the provider's name, or the server a model's base_url names."""
        title = self.connection.title
        return title[:1].upper() + title[1:]

    async def call(self, request: Callable[[Any], Awaitable[T]]) -> T:
        """``request(client)`` under the connection's limit, its failures as curated errors."""
        client = self.connection.client(self.name)  # first: it names the extra when the SDK is missing
        import openai

        try:
            return await self.connection.call(lambda: request(client))
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from None
        except openai.APITimeoutError:
            raise ProviderError(
                f"{self.title} did not answer model {self.name!r} within {self.settings.timeout_seconds:g} s "
                f"(tried {self.settings.max_retries + 1} time(s)); try again later, or raise "
                f"{self.connection.setting(self.name, 'timeout_seconds')}"
            ) from None
        except openai.APIConnectionError:
            raise ProviderError(
                f"could not reach {self.connection.place} for model {self.name!r} "
                f"(tried {self.settings.max_retries + 1} time(s)); check the network, that the server "
                f"runs, or {self.connection.setting(self.name, 'base_url')}"
            ) from None
        except (openai.APIResponseValidationError, ValueError):  # ValueError: a body that is not JSON
            raise self.malformed("a response that does not match the API's format") from None

    def _status_error(self, exc: Any) -> Exception:
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error", body) if isinstance(body.get("error", body), dict) else body
        message = clean_message(error.get("message") or exc.message, self.settings)
        code = str(error.get("code") or "")
        if exc.status_code in (401, 403) and code not in REFUSAL_CODES:
            what = "rejected the API key" if exc.status_code == 401 else "refused access"
            return ProviderError(
                f"{self.title} {what} (HTTP {exc.status_code}) for model {self.name!r}; check "
                f"{self.settings.key_from or self.settings.api_key_env or 'its api_key_env'} and the "
                "account's access"
            )
        if code in REFUSAL_CODES or "safety system" in message.lower():
            return ProviderError(f"{self.title} refused the request: {message}")
        return self.connection.status_error(self.name, int(exc.status_code), message)

    def malformed(self, what: str) -> ProviderError:
        return self.connection.malformed(self.name, what)


def _image_usage(response: Any, n: int) -> Usage:
    usage = getattr(response, "usage", None)
    return Usage(
        prompt_tokens=getattr(usage, "input_tokens", None),
        completion_tokens=getattr(usage, "output_tokens", None),
        images=n,
    )


class OpenAIImageGenerator(_Calls):
    """GPT Image / DALL-E as an :class:`~multimodal_mcp.handles.ImageGenerator`: generations, and
    (GPT Image) edits when the request has an init image or reference pictures."""

    @property
    def family(self) -> ImageFamily:
        return image_family(self.spec.source)

    def _decode(self, response: Any) -> tuple[list[Image.Image], list[str | None]]:
        data = getattr(response, "data", None)
        if not isinstance(data, list) or not data:
            raise self.malformed("no images")
        images, revised = [], []
        for item in data:
            b64 = getattr(item, "b64_json", None)
            if not isinstance(b64, str) or not b64:
                raise self.malformed("an image without b64_json data")
            try:
                raw = base64.b64decode(b64, validate=True)
                image = decode_image(raw, max_pixels=MAX_OUTPUT_PIXELS).image
            except Exception:
                raise self.malformed("image data that is not a readable image") from None
            images.append(image.convert("RGB"))
            revised.append(getattr(item, "revised_prompt", None))
        return images, revised

    async def generate(self, request: ImageRequest, *, progress: Progress | None = None) -> GeneratedImages:
        pictures = [
            *([request.init_image] if request.init_image is not None else []),
            *(r.image for r in request.references),
        ]
        if pictures:
            return await self._edit(request, pictures)
        family = self.family
        w, h = (request.width, request.height) if request.width and request.height else family.sizes[0]
        quality = request.quality or family.default_quality
        n = request.num_images
        kwargs: dict[str, Any] = {
            "model": self.spec.source,
            "prompt": request.prompt,
            "n": n,
            "size": f"{w}x{h}",
        }
        if quality is not None:
            kwargs["quality"] = quality
        if family.wants_response_format:
            kwargs["response_format"] = "b64_json"
        response = await self.call(lambda client: client.images.generate(**kwargs))
        images, revised = self._decode(response)
        sent = {"size": f"{w}x{h}", "quality": quality, "n": n}
        return GeneratedImages(images, _image_usage(response, len(images)), sent, revised)

    async def _edit(self, request: ImageRequest, pictures: Sequence[Image.Image]) -> GeneratedImages:
        """Edit ``pictures[0]`` (with the mask: 255 = repaint) or compose from all of them. With no
        width and height the provider picks the size ('auto')."""
        size = f"{request.width}x{request.height}" if request.width and request.height else "auto"
        files = [(f"image_{i}.png", png_bytes(picture(img)), "image/png") for i, img in enumerate(pictures)]
        kwargs: dict[str, Any] = {
            "model": self.spec.source,
            "prompt": request.prompt,
            "image": files,
            "n": request.num_images,
            "size": size,
        }
        mask = request.mask_image
        if mask is not None:
            # OpenAI's masks are transparent where the image is to be repainted.
            alpha = mask.convert("L").point(lambda v: 0 if v >= 128 else 255)
            rgba = Image.new("RGBA", mask.size, (0, 0, 0, 255))
            rgba.putalpha(alpha)
            kwargs["mask"] = ("mask.png", png_bytes(rgba), "image/png")
        if request.quality is not None:
            kwargs["quality"] = request.quality
        response = await self.call(lambda client: client.images.edit(**kwargs))
        out, revised = self._decode(response)
        sent = {"size": size, "n": request.num_images, "edit_images": len(files), "mask": mask is not None}
        if request.quality is not None:
            sent["quality"] = request.quality
        return GeneratedImages(out, _image_usage(response, len(out)), sent, revised)


class OpenAIChat(_Calls):
    """A chat model through chat completions: a :class:`~multimodal_mcp.handles.VisionChat` (GPT-4o
    class) and a :class:`~multimodal_mcp.handles.TextChat`."""

    async def _chat(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int,
        response_format: dict[str, Any] | None,
        **extra: Any,
    ) -> ChatAnswer:
        response = await self._create(messages, max_tokens, response_format, **extra)
        return self._answer(response)

    async def _create(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int,
        response_format: dict[str, Any] | None,
        **extra: Any,
    ) -> Any:
        kwargs: dict[str, Any] = {
            "model": self.spec.source,
            "messages": messages,
            "max_completion_tokens": max_tokens,
            **extra,
        }
        if response_format is not None:
            kwargs["response_format"] = response_format
        return await self.call(lambda client: client.chat.completions.create(**kwargs))

    def _answer(self, response: Any) -> ChatAnswer:
        try:
            choice = response.choices[0]
            message = choice.message
        except (AttributeError, IndexError, TypeError):
            raise self.malformed("a response without choices") from None
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise ProviderError(f"{self.title} refused the request: {clean_message(refusal, self.settings)}")
        if getattr(choice, "finish_reason", None) == "content_filter":
            raise ProviderError(f"{self.title} refused the request: its content filter stopped the answer")
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            raise self.malformed("a response without text")
        usage = getattr(response, "usage", None)
        counted = Usage(
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            images=0,
        )
        return ChatAnswer(text.strip(), counted.completion_tokens or 0, counted)

    async def p_yes(self, image: Image.Image, question: str) -> float:
        """P("yes") from the first answer token's top log-probabilities: the probability mass of
        tokens reading "yes" over that of "yes" and "no" (case and spaces ignored). When neither is
        among the top 20, the answer itself decides: 1.0 for yes, 0.0 otherwise."""
        content = _content([image], question, None)
        response = await self._create(
            [{"role": "user", "content": content}], 1, None, logprobs=True, top_logprobs=20
        )
        text = self._answer(response).text
        mass = {"yes": 0.0, "no": 0.0}
        try:
            top = response.choices[0].logprobs.content[0].top_logprobs
        except (AttributeError, IndexError, TypeError):
            top = []
        for candidate in top or []:
            word = str(getattr(candidate, "token", "")).strip().lower()
            if word in mass:
                mass[word] += math.exp(float(candidate.logprob))
        if mass["yes"] + mass["no"] > 0:
            return mass["yes"] / (mass["yes"] + mass["no"])
        return 1.0 if text.strip().lower().startswith("yes") else 0.0

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
        content = _content(images, prompt, detail)
        response_format = None
        if schema is not None:
            # Not strict: strict mode needs every property required and no additional properties;
            # the answer is validated against the schema afterwards either way.
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": dict(schema), "strict": False},
            }
        return await self._chat([{"role": "user", "content": content}], max_tokens, response_format)

    async def complete(
        self, system: str, prompt: str, *, max_tokens: int, progress: Progress | None = None
    ) -> ChatAnswer:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        return await self._chat(messages, max_tokens, None)


def _content(images: Sequence[Image.Image], prompt: str, detail: Detail | None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    for image in images:
        part: dict[str, Any] = {"url": data_uri(picture(image))}
        if detail is not None:
            part["detail"] = detail
        content.append({"type": "image_url", "image_url": part})
    return content


class OpenAIBackend(HostedBackend):
    """OpenAI's API (and servers that speak it)."""

    title = "OpenAI"
    tasks = frozenset({"text_to_image", "vlm", "text"})
    sdk = "openai"
    extra = "openai"

    def default_settings(self) -> HostedSettings:
        return HostedSettings(
            api_key_env="OPENAI_API_KEY",
            base_url="https://api.openai.com/v1",
            from_env={"base_url": ("OPENAI_BASE_URL",)},
        )

    def make_client(self, settings: HostedSettings) -> Any:
        import openai

        return openai.AsyncOpenAI(
            api_key=api_key(settings),
            base_url=settings.base_url,
            timeout=settings.timeout_seconds,
            max_retries=settings.max_retries,
            default_headers=settings.headers or None,
        )

    def capabilities(self, name: str, spec: ModelSpec, config: Config) -> Capabilities:
        return _capabilities(spec)

    def handle(self, name: str, spec: ModelSpec, connection: Connection) -> Handle:
        if spec.task == "text_to_image":
            return OpenAIImageGenerator(connection, name, spec)
        return OpenAIChat(connection, name, spec)


backend = OpenAIBackend()


class AzureOpenAIBackend(OpenAIBackend):
    """Azure OpenAI: the same models and wire format, through the SDK's Azure client. A model's
    ``source`` is its deployment name; the endpoint, key and API version follow the SDK's variables
    (``AZURE_OPENAI_ENDPOINT``, ``AZURE_OPENAI_API_KEY``, ``OPENAI_API_VERSION``)."""

    title = "Azure OpenAI"
    API_VERSION = "2024-10-21"
    """The API version sent when neither the config nor OPENAI_API_VERSION names one (Azure's GA release)."""

    def default_settings(self) -> HostedSettings:
        return HostedSettings(
            api_key_env="AZURE_OPENAI_API_KEY",
            base_url="https://YOUR-RESOURCE.openai.azure.com",
            api_version=self.API_VERSION,
            from_env={"base_url": ("AZURE_OPENAI_ENDPOINT",), "api_version": ("OPENAI_API_VERSION",)},
        )

    def make_client(self, settings: HostedSettings) -> Any:
        import openai

        if settings.base_url == self.default_settings().base_url:
            raise BackendError(
                "Azure OpenAI needs the resource's endpoint: set AZURE_OPENAI_ENDPOINT in the server's "
                f"environment (or hosted.{self.name}.base_url in its config file) and restart it"
            )
        return openai.AsyncAzureOpenAI(
            api_key=api_key(settings),
            azure_endpoint=settings.base_url,
            api_version=settings.api_version or self.API_VERSION,
            timeout=settings.timeout_seconds,
            max_retries=settings.max_retries,
            default_headers=settings.headers or None,
        )


azure_backend = AzureOpenAIBackend()
