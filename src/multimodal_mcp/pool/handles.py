"""Handles for local models: each call holds the model in the pool and runs it on its device lane.

These adapt a local backend's loaded model (blocking methods, see ``backends/base.py``) to the async
handle interfaces of :mod:`multimodal_mcp.handles`: placement, eviction, queueing, progress,
cancellation and batching stay the pool's. Components a request names (ControlNets, IP-Adapters,
LoRAs) are held on the same device as the model for the length of the call.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

from PIL import Image

from multimodal_mcp.backends.base import (
    CancelToken,
    ControlInput,
    GenerationRequest,
    LocalImageGenerator,
    LoraInput,
    ReferenceInput,
    RequestNote,
    StepCallback,
    json_prompt,
)
from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.handles import (
    Adjustment,
    ChatAnswer,
    Detail,
    Detection,
    Embedding,
    GeneratedImages,
    ImageRequest,
    Progress,
)
from multimodal_mcp.imaging.normalize import control_map, picture
from multimodal_mcp.pool.core import ModelPool
from multimodal_mcp.pool.lanes import Work


class _Pooled:
    def __init__(self, pool: ModelPool, name: str, capabilities: Capabilities) -> None:
        self.pool = pool
        self.name = name
        self.capabilities = capabilities


class PooledImageGenerator(_Pooled):
    """A local text-to-image model (an :class:`~multimodal_mcp.handles.ImageGenerator`)."""

    async def generate(self, request: ImageRequest, *, progress: Progress | None = None) -> GeneratedImages:
        started = time.perf_counter()
        async with AsyncExitStack() as stack:
            model: LocalImageGenerator = await stack.enter_async_context(self.pool.use(self.name))
            controls = []
            for control in request.controls:
                net = await stack.enter_async_context(self.pool.use(control.controlnet, near=model))
                controls.append(ControlInput(net.model, control_map(control.image), control.scale))
            reference = None
            for ref in request.references[:1]:
                assert ref.adapter is not None, "a local model's reference picture needs its IP-Adapter"
                adapter = await stack.enter_async_context(self.pool.use(ref.adapter, near=model))
                reference = ReferenceInput(adapter, picture(ref.image), ref.scale or 0.0)
            loras = []
            for lora in request.loras:
                weights = await stack.enter_async_context(self.pool.use(lora.name, near=model))
                loras.append(LoraInput(lora.name, weights, lora.scale))
            loaded = time.perf_counter() - started
            engine = replace(_engine_request(request, tuple(controls), reference), loras=tuple(loras))
            # What only the loaded model can tell, checked before queueing so the error comes at once.
            model.check(engine)
            images, notes = await self.pool.run(model, _generate(engine), progress=progress)
        adjustments = [Adjustment(argument=n.argument, message=n.message, dropped=n.dropped) for n in notes]
        return GeneratedImages(list(images), load_seconds=loaded, adjustments=adjustments)


def _engine_request(
    request: ImageRequest, controls: tuple[ControlInput, ...], reference: ReferenceInput | None
) -> GenerationRequest:
    assert request.width and request.height and request.steps is not None
    seeds = (
        list(request.seeds)
        if request.seeds
        else [secrets.randbelow(2**32) for _ in range(request.num_images)]
    )
    return GenerationRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.width,
        height=request.height,
        steps=request.steps,
        guidance_scale=request.guidance_scale if request.guidance_scale is not None else 0.0,
        scheduler=request.scheduler or "",
        seeds=seeds,
        controls=controls,
        init_image=picture(request.init_image) if request.init_image is not None else None,
        mask_image=request.mask_image,
        strength=request.strength,
        reference=reference,
        extra={"control_guidance_start": request.control_start, "control_guidance_end": request.control_end}
        if controls
        else {},
    )


def _generate(request: GenerationRequest) -> Work[tuple[list[Image.Image], list[RequestNote]]]:
    """The work on the device lane: what the model will change of the request (tokenizing the
    prompt is work on the caller's data, kept off the event loop), then the images."""

    def work(
        model: LocalImageGenerator, on_step: StepCallback, cancel: CancelToken
    ) -> tuple[list[Image.Image], list[RequestNote]]:
        notes = getattr(model, "notes", None)
        said: list[RequestNote] = list(notes(request)) if notes is not None else []
        return list(model.generate(request, on_step, cancel)), said

    return work


class _PooledChat(_Pooled):
    async def _run(self, call: Callable[[Any], tuple[str, int]], progress: Progress | None) -> ChatAnswer:
        started = time.perf_counter()
        async with self.pool.use(self.name) as model:
            loaded = time.perf_counter() - started
            text, tokens = await self.pool.run(model, lambda m, _step, _cancel: call(m), progress=progress)
        return ChatAnswer(str(text), int(tokens), None, loaded)


class PooledVisionChat(_PooledChat):
    """A local vision-language model (a :class:`~multimodal_mcp.handles.VisionChat`). Without
    structured output of its own, it is asked for JSON matching the schema (``prompted``)."""

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
        asked = json_prompt(prompt, schema) if schema is not None else prompt
        pictures = [picture(image) for image in images]
        return await self._run(lambda m: m.answer(pictures, asked, max_tokens), progress)

    async def p_yes(self, image: Image.Image, question: str) -> float:
        """P("yes") from the model's token probabilities (a :class:`~multimodal_mcp.handles.YesNoJudge`)."""
        shown = picture(image)
        async with self.pool.use(self.name) as model:
            return float(
                await self.pool.run(model, lambda m, _step, _cancel: m.yes_probability(shown, question))
            )


class PooledTextChat(_PooledChat):
    """A local text chat model (a :class:`~multimodal_mcp.handles.TextChat`)."""

    async def complete(
        self, system: str, prompt: str, *, max_tokens: int, progress: Progress | None = None
    ) -> ChatAnswer:
        return await self._run(lambda m: m.complete(system, prompt, max_tokens), progress)


class PooledDetector(_Pooled):
    """A local zero-shot object detector (an :class:`~multimodal_mcp.handles.ObjectDetector`)."""

    async def detect(self, image: Image.Image, labels: Sequence[str], threshold: float) -> list[Detection]:
        shown, asked = picture(image), list(labels)
        async with self.pool.use(self.name) as model:
            found = await self.pool.run(model, lambda m, _step, _cancel: m.detect(shown, asked, threshold))
        return list(found)


class PooledDepthEstimator(_Pooled):
    """A local depth estimator as the depth :class:`~multimodal_mcp.handles.ControlPreprocessor`:
    a photo in, its depth map out (near bright), run in the pool like any model."""

    control_type = "depth"

    async def __call__(self, image: Image.Image, settings: Mapping[str, Any]) -> Image.Image:
        shown = picture(image)
        async with self.pool.use(self.name) as model:
            made: Image.Image = await self.pool.run(model, lambda m, _step, _cancel: m.depth_map(shown))
        return made


class PooledEmbedder(_Pooled):
    """A local CLIP/SigLIP model (an :class:`~multimodal_mcp.handles.ImageTextEmbedder`): concurrent
    calls share forward passes through the pool's batcher, and label embeddings are cached."""

    async def embed_images(self, images: Sequence[Image.Image]) -> list[Embedding]:
        return await self.pool.clip(self.name).embed_many([picture(image) for image in images])

    async def classify(self, image: Image.Image, texts: Sequence[str]) -> list[float]:
        return await self.pool.clip(self.name).classify(picture(image), list(texts))

    async def similarities(
        self, images: Sequence[Image.Image], texts: Sequence[str]
    ) -> tuple[list[list[float]], float]:
        rows, scale = await self.pool.clip(self.name).similarities(
            [picture(image) for image in images], list(texts)
        )
        return rows, float(scale)
