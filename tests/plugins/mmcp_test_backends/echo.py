"""A hosted vision-language backend: posts the prompt and the images as JSON to ``{base_url}/answer``
and returns the text it gets back. The HTTP client is made on first use, not at import."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.config import Config, HostedSettings, ModelSpec
from multimodal_mcp.errors import ProviderError
from multimodal_mcp.handles import ChatAnswer, Detail, Handle, Progress, Usage
from multimodal_mcp.registry import HostedBackend


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class EchoChat:
    def __init__(self, connection: Any, name: str, spec: ModelSpec) -> None:
        self.connection, self.name, self.spec = connection, name, spec
        self.capabilities = Capabilities(images_per_request=4).merged(spec.capabilities)

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
        client = self.connection.client(self.name)
        body = {"model": self.spec.source, "prompt": prompt, "images": [_png(i) for i in images]}
        body["max_tokens"] = max_tokens
        reply = await self.connection.call(lambda: client.post("answer", json=body))
        if reply.status_code != 200:
            raise ProviderError(f"echo answered HTTP {reply.status_code} for model {self.name!r}")
        data = reply.json()
        usage = Usage(prompt_tokens=None, completion_tokens=data["tokens"], images=0)
        return ChatAnswer(data["text"], data["tokens"], usage)


class EchoBackend(HostedBackend):
    title = "Echo (test plugin)"
    tasks = frozenset({"vlm"})
    sdk = "httpx2"

    def default_settings(self) -> HostedSettings:
        return HostedSettings(api_key_env="ECHO_API_KEY", base_url="http://127.0.0.1:9/")

    def make_client(self, settings: HostedSettings) -> Any:
        import httpx2

        assert settings.api_key is not None
        headers = {"authorization": f"Bearer {settings.api_key.get_secret_value()}"}
        timeout = settings.timeout_seconds
        return httpx2.AsyncClient(base_url=settings.base_url, headers=headers, timeout=timeout)

    def capabilities(self, name: str, spec: ModelSpec, config: Config) -> Capabilities:
        return Capabilities(images_per_request=4)

    def handle(self, name: str, spec: ModelSpec, connection: Any) -> Handle:
        return EchoChat(connection, name, spec)


backend = EchoBackend()
