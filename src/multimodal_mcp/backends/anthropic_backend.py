"""Anthropic Claude models through the official ``anthropic`` SDK's async client
(``pip install multimodal-mcp[anthropic]``).

Vision chat (describe and compare images: every image in one message as base64 image blocks before
the question) and text chat (prompt rewriting). A ``response_schema`` is answered through tool use:
the model is made to call one tool whose input schema is the response schema, and the tool call's
input is the answer. The Messages API has no image detail setting, so ``detail`` is refused by
capability, as is ``yes_probability`` (no log-probabilities). Retries on 429, 529 (overloaded), 5xx
and connection errors are the SDK's (``max_retries``); every failure becomes a message for the agent.
The SDK is imported when the first client is made, not with this module.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from PIL import Image

from multimodal_mcp.backends.hosted import Connection, api_key, clean_message, png_bytes
from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.config import Config, HostedSettings, ModelSpec
from multimodal_mcp.errors import ProviderError
from multimodal_mcp.handles import ChatAnswer, Detail, Handle, Progress, Usage
from multimodal_mcp.imaging.normalize import picture
from multimodal_mcp.registry import HostedBackend

T = TypeVar("T")
MAX_IMAGES = 20
"""Images sent in one message (the API takes more, but each costs about 1,600 tokens at full size)."""
ANSWER_TOOL = "answer"


def _capabilities(spec: ModelSpec) -> Capabilities:
    if spec.task == "vlm":
        return Capabilities(images_per_request=MAX_IMAGES, structured_output="native")
    return Capabilities()


def _object_schema(schema: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A tool input schema must be an object: any other schema is wrapped as ``{"value": schema}``.
    Returns the tool's schema and whether the answer is to be unwrapped."""
    if schema.get("type") == "object":
        return dict(schema), False
    return {"type": "object", "properties": {"value": dict(schema)}, "required": ["value"]}, True


class ClaudeChat:
    """A Claude model through the Messages API: a :class:`~multimodal_mcp.handles.VisionChat` and a
    :class:`~multimodal_mcp.handles.TextChat`."""

    def __init__(self, connection: Connection, name: str, spec: ModelSpec) -> None:
        self.connection = connection
        self.name = name
        self.spec = spec
        self.settings = connection.settings
        self.capabilities = _capabilities(spec).merged(spec.capabilities)

    @property
    def title(self) -> str:
        title = self.connection.title
        return title[:1].upper() + title[1:]

    async def _call(self, request: Callable[[Any], Awaitable[T]]) -> T:
        """``request(client)`` under the connection's limit, its failures as curated errors."""
        client = self.connection.client(self.name)  # first: it names the extra when the SDK is missing
        import anthropic

        try:
            return await self.connection.call(lambda: request(client))
        except anthropic.APIStatusError as exc:
            raise self._status_error(exc) from None
        except anthropic.APITimeoutError:
            raise ProviderError(
                f"{self.title} did not answer model {self.name!r} within {self.settings.timeout_seconds:g} s "
                f"(tried {self.settings.max_retries + 1} time(s)); try again later, or raise "
                f"{self.connection.setting(self.name, 'timeout_seconds')}"
            ) from None
        except anthropic.APIConnectionError:
            raise ProviderError(
                f"could not reach {self.connection.place} for model {self.name!r} "
                f"(tried {self.settings.max_retries + 1} time(s)); check the network or "
                f"{self.connection.setting(self.name, 'base_url')}"
            ) from None
        except (anthropic.APIResponseValidationError, ValueError):
            raise self.connection.malformed(
                self.name, "a response that does not match the API's format"
            ) from None

    def _status_error(self, exc: Any) -> Exception:
        body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
        error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else body
        message = clean_message(error.get("message") or exc.message, self.settings)
        status = int(exc.status_code)
        if status in (401, 403):
            what = "rejected the API key" if status == 401 else "refused access"
            return ProviderError(
                f"{self.title} {what} (HTTP {status}) for model {self.name!r}; check "
                f"{self.settings.key_from or self.settings.api_key_env} and the account's access"
            )
        if status == 529:  # Anthropic's "overloaded": a rate limit in all but name
            status = 429
        return self.connection.status_error(self.name, status, message)

    async def _create(self, **kwargs: Any) -> ChatAnswer:
        kwargs["model"] = self.spec.source
        response = await self._call(lambda client: client.messages.create(**kwargs))
        stop = getattr(response, "stop_reason", None)
        if stop == "refusal":
            raise ProviderError(f"{self.title} refused the request (model {self.name!r} declined to answer)")
        blocks = getattr(response, "content", None)
        if not isinstance(blocks, list):
            raise self.connection.malformed(self.name, "a response without content")
        usage = getattr(response, "usage", None)
        counted = Usage(
            prompt_tokens=getattr(usage, "input_tokens", None),
            completion_tokens=getattr(usage, "output_tokens", None),
            images=0,
        )
        tool = next((b for b in blocks if getattr(b, "type", None) == "tool_use"), None)
        if "tools" in kwargs:
            if tool is None or not isinstance(getattr(tool, "input", None), dict):
                raise self.connection.malformed(self.name, "an answer without the requested JSON")
            text = json.dumps(tool.input)
        else:
            parts = [b.text for b in blocks if getattr(b, "type", None) == "text" and isinstance(b.text, str)]
            if not parts:
                raise self.connection.malformed(self.name, "a response without text")
            text = "".join(parts)
        return ChatAnswer(text.strip(), counted.completion_tokens or 0, counted)

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
        """Ask about ``images`` (all in one user message, in order, then ``prompt``); with ``schema``
        the answer is JSON text matching it (through a forced tool call). ``detail`` is refused by
        capability before a call gets here.

        Raises:
            ProviderError: the provider refused, failed, or answered out of format.
            Busy: rate-limited or overloaded after the SDK's retries.
        """
        content: list[dict[str, Any]] = [_image_block(image) for image in images]
        content.append({"type": "text", "text": prompt})
        kwargs: dict[str, Any] = {
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}],
        }
        if schema is None:
            return await self._create(**kwargs)
        tool_schema, wrapped = _object_schema(schema)
        kwargs["tools"] = [
            {"name": ANSWER_TOOL, "description": "Give the answer in this form.", "input_schema": tool_schema}
        ]
        kwargs["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
        found = await self._create(**kwargs)
        if wrapped:
            value = json.loads(found.text).get("value")
            return ChatAnswer(json.dumps(value), found.tokens, found.usage)
        return found

    async def complete(
        self, system: str, prompt: str, *, max_tokens: int, progress: Progress | None = None
    ) -> ChatAnswer:
        """A text-only answer to ``prompt`` under ``system``."""
        return await self._create(
            max_tokens=max_tokens, system=system, messages=[{"role": "user", "content": prompt}]
        )


def _image_block(image: Image.Image) -> dict[str, Any]:
    data = base64.b64encode(png_bytes(picture(image))).decode()
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


class AnthropicBackend(HostedBackend):
    """Anthropic's Messages API (and servers that speak it)."""

    title = "Anthropic"
    tasks = frozenset({"vlm", "text"})
    sdk = "anthropic"
    extra = "anthropic"

    def default_settings(self) -> HostedSettings:
        return HostedSettings(
            api_key_env="ANTHROPIC_API_KEY",
            base_url="https://api.anthropic.com",
            from_env={"base_url": ("ANTHROPIC_BASE_URL",)},
        )

    def make_client(self, settings: HostedSettings) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(
            api_key=api_key(settings),
            base_url=settings.base_url,
            timeout=settings.timeout_seconds,
            max_retries=settings.max_retries,
            default_headers=settings.headers or None,
        )

    def capabilities(self, name: str, spec: ModelSpec, config: Config) -> Capabilities:
        return _capabilities(spec)

    def handle(self, name: str, spec: ModelSpec, connection: Connection) -> Handle:
        return ClaudeChat(connection, name, spec)


backend = AnthropicBackend()
