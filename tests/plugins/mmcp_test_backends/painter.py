"""A local text-to-image backend: paints seeded noise over a gradient, one step at a time (numpy only).

Its loaded model runs on the pool's device lane like any local model: progress after each step,
cancellation between steps, memory counted by the pool.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import numpy as np
from PIL import Image

from multimodal_mcp.backends.base import CancelToken, GenerationRequest, LoadContext, StepCallback
from multimodal_mcp.capabilities import Capabilities, SizeRule
from multimodal_mcp.config import Config, ModelSpec
from multimodal_mcp.errors import InvalidArgument
from multimodal_mcp.registry import LocalBackend


class Painter:
    def __init__(self, seconds_per_step: float) -> None:
        self.seconds_per_step = seconds_per_step

    def memory_bytes(self) -> int:
        return 1 << 20

    def move_to(self, device: str) -> None:
        pass

    def check(self, request: GenerationRequest) -> None:
        if "forbidden" in request.prompt:
            raise InvalidArgument("the painter does not paint 'forbidden'; change the prompt")

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None, cancel: CancelToken
    ) -> list[Image.Image]:
        tint = zlib.crc32(request.prompt.encode()) % 256
        images = []
        for seed in request.seeds:
            rng = np.random.default_rng(seed)
            canvas = np.zeros((request.height, request.width, 3))
            canvas[..., 0] = np.linspace(0, 255, request.width)[None, :]
            canvas[..., 2] = tint
            for step in range(request.steps):
                cancel.raise_if_cancelled()
                canvas = 0.7 * canvas + 0.3 * rng.uniform(0, 255, canvas.shape)
                time.sleep(self.seconds_per_step)
                if on_step is not None:
                    on_step(step + 1, request.steps)
            images.append(Image.fromarray(canvas.astype(np.uint8), "RGB"))
        return images


class PainterBackend(LocalBackend):
    title = "painter (local, test plugin)"
    tasks = frozenset({"text_to_image"})

    def load(self, name: str, spec: ModelSpec, ctx: LoadContext) -> Any:
        return Painter(float(spec.pipeline_kwargs.get("seconds_per_step", 0.0)))

    def capabilities(self, name: str, spec: ModelSpec, config: Config) -> Capabilities:
        return Capabilities(seed=True, steps=True, sizes=SizeRule(multiple_of=8, max_side=512), max_images=4)


backend = PainterBackend()
