"""OpenAI models through the official ``openai`` SDK's async client (``pip install multimodal-mcp[openai]``).

Image generation (GPT Image, DALL-E 3, DALL-E 2), edits with reference images and masks (GPT Image),
and vision chat (GPT-4o class) for describing and comparing images. Images travel as base64:
``b64_json`` in, data URIs out. Retries on 429/5xx and connection errors are the SDK's
(``max_retries``, honouring ``Retry-After``); every failure becomes a message for the agent.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from PIL import Image

from multimodal_mcp.backends.hosted import (
    Detail,
    HostedAnswer,
    HostedClients,
    HostedImages,
    Usage,
    clean_message,
    data_uri,
    png_bytes,
)
from multimodal_mcp.config import HostedSettings, ModelSpec
from multimodal_mcp.errors import Busy, InvalidArgument, ProviderError, UnsupportedOperation
from multimodal_mcp.imaging.codec import decode_image

T = TypeVar("T")
REFUSAL_CODES = frozenset({"content_policy_violation", "moderation_blocked", "content_filter"})
MAX_OUTPUT_PIXELS = 4096 * 4096


def make_client(settings: HostedSettings) -> openai.AsyncOpenAI:
    assert settings.api_key is not None
    return openai.AsyncOpenAI(
        api_key=settings.api_key.get_secret_value(),
        base_url=settings.base_url,
        timeout=settings.timeout_seconds,
        max_retries=settings.max_retries,
    )


async def close_client(client: openai.AsyncOpenAI) -> None:
    await client.close()


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


def _sizes_text(family: ImageFamily) -> str:
    return ", ".join(f"{w}x{h}" for w, h in family.sizes)


def pick_size(name: str, family: ImageFamily, width: int | None, height: int | None) -> tuple[int, int]:
    """The allowed size matching the requested width/height (either may be omitted)."""
    if width is None and height is None:
        return family.sizes[0]
    fitting = [
        (w, h) for w, h in family.sizes if (width is None or w == width) and (height is None or h == height)
    ]
    if len(fitting) == 1:
        return fitting[0]
    asked = f"{width or '?'}x{height or '?'}"
    if not fitting:
        raise InvalidArgument(
            f"model {name!r} makes images of {_sizes_text(family)} only, not {asked}; pass one of these "
            "as width and height (or omit both for the first)"
        )
    raise InvalidArgument(
        f"width/height {asked} fits several sizes of model {name!r} ({_sizes_text(family)}); pass both"
    )


def check_quality(name: str, family: ImageFamily, quality: str | None) -> str | None:
    if quality is None:
        return family.default_quality
    if quality not in family.qualities:
        raise InvalidArgument(f"model {name!r} takes quality {', '.join(family.qualities)}, not {quality!r}")
    return quality


def check_n(name: str, family: ImageFamily, n: int) -> None:
    if n > family.max_n:
        if family.max_n == 1:
            raise InvalidArgument(
                f"model {name!r} makes one image per call (num_images={n} asked); call it {n} times, "
                "or use a GPT Image model (up to 10 per call)"
            )
        raise InvalidArgument(f"model {name!r} makes at most {family.max_n} images per call, not {n}")


class _Calls:
    """Error translation shared by both model kinds."""

    def __init__(
        self, clients: HostedClients, client: openai.AsyncOpenAI, name: str, spec: ModelSpec
    ) -> None:
        self.clients = clients
        self.client = client
        self.name = name
        self.spec = spec
        self.settings = clients.settings.openai

    async def call(self, request: Callable[[], Awaitable[T]]) -> T:
        async with self.clients.limit("openai"):
            self.clients.requests["openai"] += 1
            try:
                return await request()
            except openai.APIStatusError as exc:
                raise self._status_error(exc) from None
            except openai.APITimeoutError:
                raise ProviderError(
                    f"OpenAI did not answer model {self.name!r} within {self.settings.timeout_seconds:g} s "
                    f"(tried {self.settings.max_retries + 1} time(s)); try again later, or raise "
                    "hosted.openai.timeout_seconds"
                ) from None
            except openai.APIConnectionError:
                raise ProviderError(
                    f"could not reach OpenAI at {self.settings.base_url} for model {self.name!r} "
                    f"(tried {self.settings.max_retries + 1} time(s)); check the network or "
                    "hosted.openai.base_url"
                ) from None
            except (openai.APIResponseValidationError, ValueError):  # ValueError: a body that is not JSON
                raise self.malformed("a response that does not match the API's format") from None

    def _status_error(self, exc: openai.APIStatusError) -> Exception:
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error", body) if isinstance(body.get("error", body), dict) else body
        message = clean_message(error.get("message") or exc.message, self.settings)
        code = str(error.get("code") or "")
        if exc.status_code in (401, 403) and code not in REFUSAL_CODES:
            what = "rejected the API key" if exc.status_code == 401 else "refused access"
            return ProviderError(
                f"OpenAI {what} (HTTP {exc.status_code}) for model {self.name!r}; check "
                f"{self.settings.key_from or self.settings.api_key_env} and the account's access"
            )
        if code in REFUSAL_CODES or "safety system" in message.lower():
            return ProviderError(f"OpenAI refused the request: {message}")
        if exc.status_code == 429:
            return Busy(
                f"OpenAI is rate-limiting model {self.name!r} (HTTP 429 after "
                f"{self.settings.max_retries} retries): {message}. Try again in a minute."
            )
        if exc.status_code >= 500:
            return ProviderError(
                f"OpenAI failed (HTTP {exc.status_code}) for model {self.name!r} after "
                f"{self.settings.max_retries} retries: {message}. Try again later."
            )
        return ProviderError(f"OpenAI rejected the request (HTTP {exc.status_code}): {message}")

    def malformed(self, what: str) -> ProviderError:
        return ProviderError(
            f"OpenAI sent {what} for model {self.name!r}; try again, or check hosted.openai.base_url"
        )


def _image_usage(response: Any, n: int) -> Usage:
    usage = getattr(response, "usage", None)
    return Usage(
        prompt_tokens=getattr(usage, "input_tokens", None),
        completion_tokens=getattr(usage, "output_tokens", None),
        images=n,
    )


class ImageModel(_Calls):
    """GPT Image / DALL-E: ``generate`` and (GPT Image) ``edit``."""

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

    async def generate(
        self, prompt: str, *, width: int | None, height: int | None, quality: str | None, n: int
    ) -> HostedImages:
        family = self.family
        w, h = pick_size(self.name, family, width, height)
        quality = check_quality(self.name, family, quality)
        check_n(self.name, family, n)
        kwargs: dict[str, Any] = {"model": self.spec.source, "prompt": prompt, "n": n, "size": f"{w}x{h}"}
        if quality is not None:
            kwargs["quality"] = quality
        if family.wants_response_format:
            kwargs["response_format"] = "b64_json"
        response = await self.call(lambda: self.client.images.generate(**kwargs))
        images, revised = self._decode(response)
        sent = {"size": f"{w}x{h}", "quality": quality, "n": n}
        return HostedImages(images, _image_usage(response, len(images)), sent, revised)

    async def edit(
        self,
        prompt: str,
        images: Sequence[Image.Image],
        *,
        mask: Image.Image | None,
        n: int,
        width: int | None,
        height: int | None,
    ) -> HostedImages:
        """Edit ``images[0]`` (with ``mask``: white = repaint) or compose from all of them.

        With no width and height the provider picks the size ('auto')."""
        family = self.family
        if not family.edits:
            raise UnsupportedOperation(
                f"model {self.name!r} cannot edit or take reference images; use a GPT Image model "
                "(e.g. gpt-image-1)"
            )
        check_n(self.name, family, n)
        size = pick_size(self.name, family, width, height) if width or height else None
        files = [
            (f"image_{i}.png", png_bytes(img.convert("RGB")), "image/png") for i, img in enumerate(images)
        ]
        kwargs: dict[str, Any] = {
            "model": self.spec.source,
            "prompt": prompt,
            "image": files,
            "n": n,
            "size": f"{size[0]}x{size[1]}" if size else "auto",
        }
        if mask is not None:
            # OpenAI's masks are transparent where the image is to be repainted.
            alpha = mask.convert("L").point(lambda v: 0 if v >= 128 else 255)
            rgba = Image.new("RGBA", mask.size, (0, 0, 0, 255))
            rgba.putalpha(alpha)
            kwargs["mask"] = ("mask.png", png_bytes(rgba), "image/png")
        response = await self.call(lambda: self.client.images.edit(**kwargs))
        out, revised = self._decode(response)
        sent = {"size": kwargs["size"], "n": n, "edit_images": len(files), "mask": mask is not None}
        return HostedImages(out, _image_usage(response, len(out)), sent, revised)


class ChatModel(_Calls):
    """A vision chat model (GPT-4o class) through chat completions."""

    async def _chat(
        self, messages: list[dict[str, Any]], max_tokens: int, response_format: dict[str, Any] | None
    ) -> HostedAnswer:
        kwargs: dict[str, Any] = {
            "model": self.spec.source,
            "messages": messages,
            "max_completion_tokens": max_tokens,
        }
        if response_format is not None:
            kwargs["response_format"] = response_format
        response = await self.call(lambda: self.client.chat.completions.create(**kwargs))
        try:
            choice = response.choices[0]
            message = choice.message
        except (AttributeError, IndexError, TypeError):
            raise self.malformed("a response without choices") from None
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise ProviderError(f"OpenAI refused the request: {clean_message(refusal, self.settings)}")
        if getattr(choice, "finish_reason", None) == "content_filter":
            raise ProviderError("OpenAI refused the request: its content filter stopped the answer")
        text = getattr(message, "content", None)
        if not isinstance(text, str):
            raise self.malformed("a response without text")
        usage = getattr(response, "usage", None)
        return HostedAnswer(
            text.strip(),
            Usage(
                prompt_tokens=getattr(usage, "prompt_tokens", None),
                completion_tokens=getattr(usage, "completion_tokens", None),
                images=0,
            ),
        )

    async def answer(
        self,
        images: list[Image.Image],
        prompt: str,
        *,
        max_tokens: int,
        detail: Detail | None,
        schema: dict[str, Any] | None,
    ) -> HostedAnswer:
        content: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        for image in images:
            part: dict[str, Any] = {"url": data_uri(image.convert("RGB"))}
            if detail is not None:
                part["detail"] = detail
            content.append({"type": "image_url", "image_url": part})
        response_format = None
        if schema is not None:
            # Not strict: strict mode needs every property required and no additional properties;
            # the answer is validated against the schema afterwards either way.
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": False},
            }
        return await self._chat([{"role": "user", "content": content}], max_tokens, response_format)

    async def complete(self, system: str, prompt: str, max_tokens: int) -> tuple[str, int]:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        answer = await self._chat(messages, max_tokens, None)
        return answer.text, answer.usage.completion_tokens or 0
