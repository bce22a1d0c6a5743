"""Batching for CLIP: concurrent classifications and embeddings share one forward pass, and label
embeddings are cached so a repeated label set skips the text encoder."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from PIL import Image

from multimodal_mcp.handles import Embedding
from multimodal_mcp.pool.core import CALL_LOAD_SECONDS, ModelPool

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    image: Image.Image
    texts: list[str] | None  # None: embedding only
    cosine: bool = False  # raw cosine similarities and the logit scale instead of a softmax
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: BaseException | None = None
    load_seconds: float = 0.0  # what its batch waited for the model to be loaded or placed


class ClipBatcher:
    """Collects CLIP requests for up to ``wait_s`` (or ``max_batch`` images) and runs them together.

    Declared as data: ``max_batch`` and ``wait_s``. Runs in the pool's task group.
    """

    def __init__(self, pool: ModelPool, name: str, *, max_batch: int, wait_s: float, cache_size: int) -> None:
        self.pool = pool
        self.name = name
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.cache_size = cache_size
        self._pending: list[_Request] = []
        self._full = anyio.Event()
        self._running = False
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.batches = 0
        self.requests = 0
        self.cache_hits = 0
        self.cache_misses = 0

    def stats(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "mean_batch": round(self.requests / self.batches, 2) if self.batches else None,
            "label_cache_hits": self.cache_hits,
            "label_cache_misses": self.cache_misses,
            "label_cache_size": len(self._cache),
        }

    async def classify(self, image: Image.Image, texts: list[str]) -> list[float]:
        """One probability per text: a softmax over the model's logits (CLIP, summing to 1), or each
        logit's sigmoid for sigmoid-loss models (SigLIP, independent of the other texts)."""
        (probabilities,) = await self._submit([_Request(image, texts)])
        return list(probabilities)

    async def similarities(
        self, images: list[Image.Image], texts: list[str]
    ) -> tuple[list[list[float]], float]:
        """Cosine similarity of each image to each text (one row per image), and the model's logit
        scale (what turns a difference of cosines into a difference of logits)."""
        results = await self._submit([_Request(image, texts, cosine=True) for image in images])
        scale = results[0][1] if results else 1.0
        return [list(cosines) for cosines, _ in results], scale

    async def embed(self, image: Image.Image) -> Embedding:
        """The image's L2-normalised embedding."""
        (embedding,) = await self.embed_many([image])
        return embedding

    async def embed_many(self, images: list[Image.Image]) -> list[Embedding]:
        """Embeddings of several images, submitted together so they share a batch."""
        requests = [_Request(image, None) for image in images]
        return [np.asarray(result) for result in await self._submit(requests)]

    async def _submit(self, requests: list[_Request]) -> list[Any]:
        if not self._running:
            self.pool.start_background(self._drain)  # raises before anything is queued if not running
            self._running = True
        self._pending.extend(requests)
        if len(self._pending) >= self.max_batch:
            self._full.set()
        for request in requests:
            await request.done.wait()
        loads = CALL_LOAD_SECONDS.get()
        if loads is not None and requests:
            loads.append(max(request.load_seconds for request in requests))
        for request in requests:
            if request.error is not None:
                raise request.error
        return [request.result for request in requests]

    async def _drain(self) -> None:
        try:
            while self._pending:
                if len(self._pending) < self.max_batch and self.wait_s > 0:
                    with anyio.move_on_after(self.wait_s):
                        await self._full.wait()
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self._full = anyio.Event()
                if len(self._pending) >= self.max_batch:
                    self._full.set()
                await self._run(batch)
        finally:
            self._running = False

    async def _run(self, batch: list[_Request]) -> None:
        self.batches += 1
        self.requests += len(batch)
        started = time.perf_counter()
        try:
            async with self.pool.use(self.name) as model:
                for request in batch:
                    request.load_seconds = time.perf_counter() - started
                sigmoid = bool(getattr(model, "sigmoid", False))
                wanted = list(dict.fromkeys(t for r in batch if r.texts for t in r.texts))
                known = {t: self._cache[t] for t in wanted if t in self._cache}
                missing = [t for t in wanted if t not in known]
                self.cache_hits += len(known)
                self.cache_misses += len(missing)
                images = [r.image for r in batch]
                compute: Callable[..., tuple[np.ndarray, np.ndarray | None, tuple[float, float]]] = _compute
                image_emb, text_emb, (scale, bias) = await self.pool.run(
                    model, lambda m, _step, _cancel: compute(m, images, missing)
                )
            if text_emb is not None:
                for text, emb in zip(missing, text_emb, strict=True):
                    self._remember(text, emb)
            if text_emb is not None:
                known.update(zip(missing, text_emb, strict=True))
            for request, emb in zip(batch, image_emb, strict=True):
                if request.texts is None:
                    request.result = emb
                else:
                    texts = np.stack([known[t] for t in request.texts])
                    if request.cosine:
                        request.result = ((texts @ emb).tolist(), scale)
                        continue
                    logits = scale * (texts @ emb) + bias
                    if sigmoid:  # SigLIP: each label's own probability
                        request.result = (1 / (1 + np.exp(-logits))).tolist()
                        continue
                    exp = np.exp(logits - logits.max())
                    request.result = (exp / exp.sum()).tolist()
        except BaseException as exc:
            for request in batch:
                request.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for request in batch:
                request.done.set()

    def _remember(self, text: str, embedding: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        self._cache[text] = embedding
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def _compute(
    model: Any, images: list[Image.Image], texts: list[str]
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float]]:
    image_emb = model.encode_images(images)
    text_emb = model.encode_texts(texts) if texts else None
    return image_emb, text_emb, model.logit_parameters()
