"""Diffusers pipelines: text to image and ControlNet-guided generation."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

from PIL import Image

from multimodal_mcp.backends.base import CancelToken, GenerationRequest, LoadContext, StepCallback
from multimodal_mcp.backends.devices import module_bytes, pick_dtype
from multimodal_mcp.backends.schedulers import build_scheduler, check_scheduler, choices_for
from multimodal_mcp.backends.sources import load_error, quiet_progress_bars, resolve_source
from multimodal_mcp.config import ModelSpec
from multimodal_mcp.errors import InvalidArgument, UnsupportedOperation

logger = logging.getLogger(__name__)

# Pipeline family -> the diffusers class that adds a ControlNet to it.
_CONTROLNET_PIPELINES: dict[str, str] = {
    "sd": "StableDiffusionControlNetPipeline",
    "sdxl": "StableDiffusionXLControlNetPipeline",
}


def _family(pipe: Any) -> str:
    name = type(pipe).__name__
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("StableDiffusionXL"):
        return "sdxl"
    if name.startswith("StableDiffusion3"):
        return "sd3"
    if name.startswith("StableDiffusion"):
        return "sd"
    return name


def _pipeline_over(cls: Any, base: Any, overrides: dict[str, Any]) -> Any:
    """A new pipeline object of ``cls`` over ``base``'s modules (no weights are copied).

    Only the given components (a fresh scheduler, a ControlNet) are new; registered config values
    such as ``requires_safety_checker`` carry over so the new object behaves like the base.
    """
    accepted = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {k: v for k, v in base.components.items() if k in accepted}
    for key, value in base.config.items():
        if (
            key in accepted
            and key not in kwargs
            and not key.startswith("_")
            and not isinstance(value, list | tuple)
        ):
            kwargs[key] = value
    kwargs.update(overrides)
    return cls(**kwargs)


class DiffusionModel:
    """A loaded text-to-image pipeline. ``generate`` is blocking and runs in a pool worker thread."""

    def __init__(self, name: str, spec: ModelSpec, pipe: Any, device: str) -> None:
        self.name = name
        self.spec = spec
        self.device = device
        self.pipe = pipe
        self.family = _family(pipe)
        self.flow_matching = "FlowMatch" in type(pipe.scheduler).__name__
        vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
        # Flux packs 2x2 latent patches, so its sizes must be multiples of twice the VAE factor.
        self.size_multiple = vae_factor * 2 if self.family == "flux" else vae_factor
        self.takes_negative_prompt = "negative_prompt" in inspect.signature(type(pipe).__call__).parameters
        self._bytes = module_bytes(pipe.components.values())

    def memory_bytes(self) -> int:
        return self._bytes

    def move_to(self, device: str) -> None:
        """Move the weights (the pool offloads idle GPU models to CPU RAM and back)."""
        self.pipe.to(device)
        self.device = device

    @property
    def schedulers(self) -> list[str]:
        return list(choices_for(self.flow_matching))

    def check(self, request: GenerationRequest) -> None:
        """Model-specific argument checks, run before queueing so errors come back at once."""
        for side, value in (("width", request.width), ("height", request.height)):
            if value % self.size_multiple:
                raise InvalidArgument(
                    f"{side}={value} is not a multiple of {self.size_multiple}, which model {self.name!r} "
                    f"needs; use {value - value % self.size_multiple or self.size_multiple} "
                    f"or {value - value % self.size_multiple + self.size_multiple}"
                )
        if request.negative_prompt and (self.family == "flux" or not self.takes_negative_prompt):
            raise InvalidArgument(
                f"model {self.name!r} is guidance-distilled and ignores negative prompts; "
                "leave negative_prompt empty or choose a Stable Diffusion model"
            )
        check_scheduler(request.scheduler, flow_matching=self.flow_matching, model=self.name)

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None, cancel: CancelToken
    ) -> list[Image.Image]:
        """Run the pipeline; one image per seed, each reproducible from its own seed."""
        import torch

        self.check(request)
        scheduler = build_scheduler(
            request.scheduler, self.pipe.scheduler.config, flow_matching=self.flow_matching, model=self.name
        )
        overrides: dict[str, Any] = {"scheduler": scheduler}
        pipe_cls: Any = type(self.pipe)
        if request.controls:
            pipe_cls = self._controlnet_pipeline_class()
            nets = [c.controlnet for c in request.controls]
            if len(nets) == 1:
                overrides["controlnet"] = nets[0]
            else:
                from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

                overrides["controlnet"] = MultiControlNetModel(nets)
        pipe = _pipeline_over(pipe_cls, self.pipe, overrides)
        pipe.set_progress_bar_config(disable=True)

        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in request.seeds]
        total = request.steps

        def on_step_end(
            _pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            cancel.raise_if_cancelled()
            if on_step is not None:
                on_step(min(step + 1, total), total)
            return callback_kwargs

        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": len(request.seeds),
            "generator": generators,
            "output_type": "pil",
            "callback_on_step_end": on_step_end,
            **self.spec.pipeline_kwargs,
            **request.extra,
        }
        if request.negative_prompt:
            kwargs["negative_prompt"] = request.negative_prompt
        if request.controls:
            images = [
                c.image.convert("RGB").resize((request.width, request.height)) for c in request.controls
            ]
            scales = [c.scale for c in request.controls]
            kwargs["image"] = images[0] if len(images) == 1 else images
            kwargs["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
        cancel.raise_if_cancelled()
        with torch.inference_mode():
            output = pipe(**kwargs)
        return list(output.images)

    def _controlnet_pipeline_class(self) -> Any:
        import diffusers

        class_name = _CONTROLNET_PIPELINES.get(self.family)
        if class_name is None:
            raise UnsupportedOperation(
                f"model {self.name!r} ({self.family}) has no ControlNet support in this server; "
                "use a Stable Diffusion 1.5 or SDXL model"
            )
        return getattr(diffusers, class_name)


@dataclass
class ControlNetWeights:
    """A loaded ControlNet; it is attached to a base pipeline per request, never copied."""

    name: str
    spec: ModelSpec
    device: str
    model: Any
    _bytes: int = 0

    def memory_bytes(self) -> int:
        return self._bytes

    def move_to(self, device: str) -> None:
        self.model.to(device)
        self.device = device


def _pretrained_kwargs(name: str, spec: ModelSpec, ctx: LoadContext) -> tuple[str, dict[str, Any]]:
    source = resolve_source(spec.source, ctx.tiny_dir)
    quiet_progress_bars()
    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(spec.dtype, ctx.device, model=name),
        "use_safetensors": True,
    }
    if spec.variant:
        kwargs["variant"] = spec.variant
    return source, kwargs


def load_text_to_image(name: str, spec: ModelSpec, ctx: LoadContext) -> DiffusionModel:
    from diffusers import AutoPipelineForText2Image

    source, kwargs = _pretrained_kwargs(name, spec, ctx)
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise load_error(name, spec, exc) from exc
    pipe = pipe.to(ctx.device)
    pipe.set_progress_bar_config(disable=True)
    return DiffusionModel(name, spec, pipe, ctx.device)


def load_controlnet(name: str, spec: ModelSpec, ctx: LoadContext) -> ControlNetWeights:
    from diffusers import ControlNetModel

    source, kwargs = _pretrained_kwargs(name, spec, ctx)
    try:
        model = ControlNetModel.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise load_error(name, spec, exc) from exc
    model = model.to(ctx.device)
    return ControlNetWeights(name, spec, ctx.device, model, module_bytes([model]))
