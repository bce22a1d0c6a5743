"""The front's handles for models served by a replica elsewhere (a Ray Serve deployment).

They implement the handle interfaces of :mod:`multimodal_mcp.handles` by sending the call, addressed
by model name, through a :class:`Caller`; the tools cannot tell them from in-process handles. The
capabilities are the front's (the hub has already checked the call against them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from PIL import Image

from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.handles import (
    ChatAnswer,
    Detail,
    Detection,
    Embedding,
    GeneratedImages,
    ImageRequest,
    Progress,
    Verdict,
)


class Caller(Protocol):
    """Sends one handle call to the deployment serving ``model`` and returns its result.

    Implementations forward the replica's progress to ``progress``, bound the call by a timeout, and
    on cancellation of the calling task cancel the remote call too.

    Raises:
        MultimodalError: the replica's curated error, ``Busy`` when the deployment is at capacity,
            ``BackendError`` when it timed out, was lost or failed.
    """

    async def __call__(
        self,
        model: str,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        progress: Progress | None,
    ) -> Any: ...


class _Remote:
    def __init__(self, caller: Caller, name: str, capabilities: Capabilities) -> None:
        self._caller = caller
        self.name = name
        self.capabilities = capabilities

    async def _call(self, method: str, *args: Any, progress: Progress | None = None, **kwargs: Any) -> Any:
        return await self._caller(self.name, method, args, kwargs, progress)


class RemoteImageGenerator(_Remote):
    """An :class:`~multimodal_mcp.handles.ImageGenerator` served by a replica."""

    async def generate(self, request: ImageRequest, *, progress: Progress | None = None) -> GeneratedImages:
        result = await self._call("generate", request, progress=progress)
        assert isinstance(result, GeneratedImages)
        return result


class RemoteVisionChat(_Remote):
    """A :class:`~multimodal_mcp.handles.VisionChat` (and YesNoJudge) served by a replica."""

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
        result = await self._call(
            "answer",
            list(images),
            prompt,
            max_tokens=max_tokens,
            detail=detail,
            schema=dict(schema) if schema is not None else None,
            progress=progress,
        )
        assert isinstance(result, ChatAnswer)
        return result

    async def p_yes(self, image: Image.Image, question: str) -> float:
        return float(await self._call("p_yes", image, question))


class RemoteTextChat(_Remote):
    """A :class:`~multimodal_mcp.handles.TextChat` served by a replica."""

    async def complete(
        self, system: str, prompt: str, *, max_tokens: int, progress: Progress | None = None
    ) -> ChatAnswer:
        result = await self._call("complete", system, prompt, max_tokens=max_tokens, progress=progress)
        assert isinstance(result, ChatAnswer)
        return result


class RemoteEmbedder(_Remote):
    """An :class:`~multimodal_mcp.handles.ImageTextEmbedder` served by a replica, whose own batcher
    shares forward passes between the concurrent calls it receives."""

    async def embed_images(self, images: Sequence[Image.Image]) -> list[Embedding]:
        return list(await self._call("embed_images", list(images)))

    async def classify(self, image: Image.Image, texts: Sequence[str]) -> list[float]:
        return [float(p) for p in await self._call("classify", image, list(texts))]

    async def similarities(
        self, images: Sequence[Image.Image], texts: Sequence[str]
    ) -> tuple[list[list[float]], float]:
        rows, scale = await self._call("similarities", list(images), list(texts))
        return rows, float(scale)


class RemoteDepthEstimator(_Remote):
    """The depth :class:`~multimodal_mcp.handles.ControlPreprocessor` served by a replica: a photo
    in, its depth map out (near bright), made by the replica's depth model."""

    control_type = "depth"

    async def __call__(self, image: Image.Image, settings: Mapping[str, Any]) -> Image.Image:
        made = await self._call("depth_map", image)
        assert isinstance(made, Image.Image)
        return made


class RemoteSafetyChecker:
    """The server's :class:`~multimodal_mcp.handles.SafetyChecker` run by a replica (deployment
    ``safety``): the generated images go there and their verdicts come back. Raises when the
    replica cannot judge, so callers fail closed as with the in-process filter."""

    def __init__(self, caller: Caller, name: str) -> None:
        self._caller = caller
        self.name = name

    @property
    def enabled(self) -> bool:
        return True

    async def screen(self, images: Sequence[Image.Image]) -> list[Verdict]:
        verdicts = list(await self._caller(self.name, "screen", (list(images),), {}, None))
        if len(verdicts) != len(images) or not all(isinstance(v, Verdict) for v in verdicts):
            raise RuntimeError(
                f"the safety replica returned {len(verdicts)} verdicts for {len(images)} images"
            )
        return verdicts


class RemoteDetector(_Remote):
    """An :class:`~multimodal_mcp.handles.ObjectDetector` served by a replica."""

    async def detect(self, image: Image.Image, labels: Sequence[str], threshold: float) -> list[Detection]:
        return list(await self._call("detect", image, list(labels), threshold))


REMOTE: dict[str, type[_Remote]] = {
    "text_to_image": RemoteImageGenerator,
    "vlm": RemoteVisionChat,
    "text": RemoteTextChat,
    "clip": RemoteEmbedder,
    "detector": RemoteDetector,
    "depth": RemoteDepthEstimator,
}
"""The remote handle class for each task a deployment serves."""
