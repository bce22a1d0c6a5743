"""generate_image: text to image with a local diffusion or flow-matching model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import BaseModel, Field

from multimodal_mcp.backends.base import CancelToken, ControlInput, GenerationRequest, StepCallback
from multimodal_mcp.backends.safety import Verdict
from multimodal_mcp.backends.schedulers import ALL_SCHEDULERS
from multimodal_mcp.config import ModelSpec
from multimodal_mcp.errors import BackendError, InvalidArgument
from multimodal_mcp.imaging.store import ImageRecord
from multimodal_mcp.tools.common import (
    Clock,
    ImageRef,
    ModelArg,
    Params,
    Progress,
    Result,
    Services,
    Timings,
    check_limit,
    draw_seed,
    in_thread,
    pick_model,
)

logger = logging.getLogger(__name__)

SchedulerName = Literal[ALL_SCHEDULERS]  # type: ignore[valid-type]

Prompt = Annotated[str, Field(min_length=1, max_length=4000, description="What the image should show.")]
NegativePrompt = Annotated[
    str | None,
    Field(max_length=4000, description="What the image should not show (diffusion models only; not Flux)."),
]
Side = Annotated[
    int | None,
    Field(
        ge=64,
        le=4096,
        multiple_of=8,
        description="Pixels; omit for the model's default. Multiple of 8 (16 for Flux).",
    ),
]
Steps = Annotated[
    int | None, Field(ge=1, le=200, description="Denoising steps; omit for the model's default.")
]
Guidance = Annotated[
    float | None,
    Field(
        ge=0.0, le=30.0, description="Classifier-free guidance scale; higher follows the prompt more closely."
    ),
]
Scheduler = Annotated[
    SchedulerName | None,
    Field(
        description=(
            "Sampler: dpm++, dpm++_karras, euler, euler_a, heun, ddim, unipc, pndm for diffusion models; "
            "flow_euler, flow_euler_karras, flow_euler_sde for flow-matching models (Flux)."
        )
    ),
]
Seed = Annotated[
    int | None,
    Field(
        ge=0,
        le=2**32 - 1,
        description="Random seed; omit to draw one. The same seed and arguments repeat the image.",
    ),
]
NumImages = Annotated[int, Field(ge=1, le=16, description="How many images to make (image i uses seed + i).")]


class GenerateImageParams(Params):
    prompt: Prompt
    negative_prompt: NegativePrompt = None
    model: ModelArg = None
    width: Side = None
    height: Side = None
    steps: Steps = None
    guidance_scale: Guidance = None
    scheduler: Scheduler = None
    seed: Seed = None
    num_images: NumImages = 1


class GeneratedImage(ImageRef):
    seed: int = Field(
        description=(
            "This image's own seed: generate_image with it and num_images=1 gives the same image again "
            "(up to rounding in the last bit of a few pixels, since batches are computed together)."
        )
    )


class WithheldImage(BaseModel):
    seed: int = Field(description="The seed of the image that was withheld.")
    category: str = Field(description="What the safety filter flagged, e.g. 'nsfw'.")
    reason: str


class GenerationParameters(Params):
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    num_images: int


class GenerateImageResult(Result):
    images: list[GeneratedImage]
    seed: int = Field(description="The base seed (image i used seed + i).")
    model: str
    parameters: GenerationParameters
    timings: Timings
    withheld: list[WithheldImage] = Field(
        default_factory=list,
        description="Images the server's safety filter withheld (not stored, no id); empty when none.",
    )

    def summary(self) -> str:
        p = self.parameters
        made = (
            f"with {self.model} (seed {self.seed}, {p.width}x{p.height}, "
            f"{p.steps} steps, {p.scheduler}, guidance {p.guidance_scale}) "
            f"in {self.timings.total_seconds:.1f} s"
        )
        notice = self.withheld_notice()
        if not self.images:
            return f"Generated no image to return {made}: {notice} Try a different prompt."
        uris = ", ".join(img.uri for img in self.images)
        first = self.images[0].uri
        text = f"Generated {len(self.images)} image(s) {made}: {uris}. "
        if notice:
            text += f"{notice} "
        return text + (
            f"Next: check it with clip_classify or describe_image (image='{first}'), "
            "or compare_images against another image."
        )

    def withheld_notice(self) -> str:
        if not self.withheld:
            return ""
        reasons = "; ".join(dict.fromkeys(w.reason for w in self.withheld))
        return (
            f"{len(self.withheld)} of {len(self.images) + len(self.withheld)} image(s) withheld by the "
            f"server's safety filter ({reasons}); they were not stored and have no id."
        )

    def preview_ids(self) -> list[str]:
        return [img.id for img in self.images]


def resolve_parameters(
    *,
    spec: ModelSpec,
    prompt: str,
    negative_prompt: str | None,
    width: int | None,
    height: int | None,
    steps: int | None,
    guidance_scale: float | None,
    scheduler: str | None,
    num_images: int,
    services: Services,
    default_scheduler: str,
) -> GenerationParameters:
    """Fill ``None`` from the model's defaults and check the server's limits."""
    limits = services.config.server.limits
    d = spec.defaults
    resolved = GenerationParameters(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        width=width or d.width or 512,
        height=height or d.height or 512,
        steps=steps or d.steps or 30,
        guidance_scale=guidance_scale if guidance_scale is not None else (d.guidance_scale or 0.0),
        scheduler=scheduler or d.scheduler or default_scheduler,
        num_images=num_images,
    )
    check_limit("width", resolved.width, limits.max_side, "ask for a smaller image")
    check_limit("height", resolved.height, limits.max_side, "ask for a smaller image")
    check_limit("steps", resolved.steps, limits.max_steps, "use fewer steps")
    check_limit("num_images", num_images, limits.max_images, "make fewer images per call")
    pixels = resolved.width * resolved.height * num_images
    if pixels > limits.max_pixels_per_call:
        raise InvalidArgument(
            f"width*height*num_images = {pixels} pixels exceeds this server's limit of "
            f"{limits.max_pixels_per_call} per call; make fewer or smaller images"
        )
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidArgument(
            f"the prompt is {len(prompt)} characters; the limit is {limits.max_prompt_chars}"
        )
    return resolved


async def store_generated(
    services: Services,
    images: list[Image.Image],
    *,
    seeds: list[int],
    model: str,
    parameters: GenerationParameters,
    parents: list[str] | None = None,
    extra_parameters: dict[str, object] | None = None,
) -> tuple[list[GeneratedImage], list[WithheldImage]]:
    """Pass generated images through the safety filter (when on) and store those it lets through.

    A withheld image is never written: it gets no id, so no resource or tool can serve it.
    """
    verdicts = await _screen(services, images)

    def write() -> list[ImageRecord]:
        recorded = {
            **parameters.model_dump(exclude={"prompt", "negative_prompt"}),
            **(extra_parameters or {}),
        }
        return [
            services.store.put(
                image,
                kind="generated",
                prompt=parameters.prompt,
                negative_prompt=parameters.negative_prompt,
                seed=seed,
                model=model,
                parameters=recorded,
                parents=parents,
            )
            for image, seed, verdict in zip(images, seeds, verdicts, strict=True)
            if not verdict.flagged
        ]

    records = await in_thread(write)
    kept = [s for s, v in zip(seeds, verdicts, strict=True) if not v.flagged]
    withheld = [
        WithheldImage(seed=s, category=v.category, reason=v.reason)
        for s, v in zip(seeds, verdicts, strict=True)
        if v.flagged
    ]
    refs = [GeneratedImage(**ImageRef.of(r).model_dump(), seed=s) for r, s in zip(records, kept, strict=True)]
    return refs, withheld


async def _screen(services: Services, images: list[Image.Image]) -> list[Verdict]:
    gate = services.safety
    if gate is None or not gate.enabled:
        return [Verdict(flagged=False) for _ in images]
    try:
        return await in_thread(gate.check, images)
    except Exception as exc:
        # Fail closed: an image the filter could not check is not returned.
        logger.error("the safety filter failed; withholding %d image(s)", len(images), exc_info=exc)
        raise BackendError(
            f"the server's safety filter could not check the {len(images)} generated image(s), so none "
            "was stored or returned; try again, and tell the server's operator if it keeps failing"
        ) from None


def generation_request(
    parameters: GenerationParameters, seeds: list[int], controls: tuple[ControlInput, ...] = ()
) -> GenerationRequest:
    return GenerationRequest(
        prompt=parameters.prompt,
        negative_prompt=parameters.negative_prompt,
        width=parameters.width,
        height=parameters.height,
        steps=parameters.steps,
        guidance_scale=parameters.guidance_scale,
        scheduler=parameters.scheduler,
        seeds=seeds,
        controls=controls,
    )


def _denoise(request: GenerationRequest) -> Callable[[Any, StepCallback, CancelToken], list[Image.Image]]:
    def work(model: Any, on_step: StepCallback, cancel: CancelToken) -> list[Image.Image]:
        return list(model.generate(request, on_step, cancel))

    return work


async def generate_image(
    params: GenerateImageParams, services: Services, progress: Progress | None = None
) -> GenerateImageResult:
    """Generate images from a text prompt with a local text-to-image model (Stable Diffusion, SDXL, Flux).

    Every image is stored and returned with an id: pass 'image://<id>' to clip_classify,
    describe_image or compare_images to check it, or reuse the seed to refine the prompt while
    keeping the composition. Omitted arguments use the model's configured defaults
    (see list_models). Flux models take no negative prompt and use guidance 0.
    If the server runs a safety filter, images it flags are withheld (not stored, no id) and the
    result's 'withheld' list says how many and why.
    """
    # 1. Check inputs
    clock = Clock()
    name, spec = pick_model(services.config, params.model, "text_to_image", "text_to_image")
    parameters = resolve_parameters(
        spec=spec,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        width=params.width,
        height=params.height,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        scheduler=params.scheduler,
        num_images=params.num_images,
        services=services,
        default_scheduler="dpm++",
    )
    seed = params.seed if params.seed is not None else draw_seed()
    seeds = [(seed + i) % 2**32 for i in range(params.num_images)]

    request = generation_request(parameters, seeds)

    # 2. Get the model, check what only the model knows (size multiples, sampler family)
    async with clock.use(services, name) as model:
        model.check(request)

        # 3. Denoise on the model's device lane (queued in order, cancellable between steps)
        async with clock.infer():
            images = await services.pool.run(model, _denoise(request), progress=progress)

    # 4. Store and describe
    refs, withheld = await store_generated(services, images, seeds=seeds, model=name, parameters=parameters)
    return GenerateImageResult(
        images=refs,
        seed=seed,
        model=name,
        parameters=parameters,
        timings=clock.timings(),
        withheld=withheld,
    )
