"""The fake models the views' browser tests run on (tests/fake_hub.py, a few capabilities more)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from multimodal_mcp.handles import GeneratedImages, ImageRequest, Progress
from multimodal_mcp.tools.common import Services

from fake_hub import DIFFUSION, MODELS, FakeImageGenerator, fake_config, fake_handles, fake_services_for


@dataclass
class SlowGenerator(FakeImageGenerator):
    """A FakeImageGenerator that takes ``seconds`` per call (to outlast the server's job wait)."""

    seconds: float = 0.0

    async def generate(self, request: ImageRequest, *, progress: Progress | None = None) -> GeneratedImages:
        await anyio.sleep(self.seconds)
        return await super().generate(request, progress=progress)


def steerable_services(
    tmp_path: Path, allowed_root: Path, *, generation_seconds: float = 0.0, **server: Any
) -> Services:
    """The fake hub, its diffusion model also inpainting and steered by a canny ControlNet (for the
    gallery's img2img, reference and inpainting buttons), each generation taking
    ``generation_seconds``; ``server``: [server] settings."""
    steerable = DIFFUSION.model_copy(
        update={"edit_modes": ("img2img", "inpaint"), "control_types": ("canny",)}
    )
    generator = SlowGenerator("fake-sd", steerable, seconds=generation_seconds)
    handles = [generator if getattr(h, "name", None) == "fake-sd" else h for h in fake_handles()]
    canny = {"task": "controlnet", "backend": "diffusers", "source": "fake/canny", "control_type": "canny"}
    models = {**MODELS, "fake-canny": {**canny, "base_models": ["fake-sd"]}}
    return fake_services_for(fake_config(tmp_path, allowed_root, models=models, **server), handles)
