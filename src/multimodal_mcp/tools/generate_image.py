"""generate_image: text to image with a local diffusion or flow-matching model, or a hosted one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import Field

from multimodal_mcp.backends.base import CancelToken, ControlInput, GenerationRequest, StepCallback
from multimodal_mcp.backends.hosted import HostedImages, Usage
from multimodal_mcp.backends.schedulers import ALL_SCHEDULERS
from multimodal_mcp.config import ModelSpec
from multimodal_mcp.errors import InvalidArgument, UnsupportedOperation
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
    refuse_hosted_only,
)

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
Quality = Annotated[
    Literal["auto", "low", "medium", "high", "standard", "hd"] | None,
    Field(
        description=(
            "Hosted OpenAI image models only: auto, low, medium or high for GPT Image; standard or hd for "
            "DALL-E 3. Local models refuse it (use steps)."
        )
    ),
]


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
    quality: Quality = None


class GeneratedImage(ImageRef):
    seed: int | None = Field(
        description=(
            "This image's own seed: generate_image with it and num_images=1 gives the same image again "
            "(up to rounding in the last bit of a few pixels, since batches are computed together). "
            "Null for hosted models, which take no seed."
        )
    )
    revised_prompt: str | None = Field(
        default=None, description="DALL-E 3: the prompt as the provider rewrote it before generating."
    )


class GenerationParameters(Params):
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int | None = Field(description="Null for hosted models.")
    guidance_scale: float | None = Field(description="Null for hosted models.")
    scheduler: str | None = Field(description="Null for hosted models.")
    num_images: int


class GenerateImageResult(Result):
    images: list[GeneratedImage]
    seed: int | None = Field(description="The base seed (image i used seed + i); null for hosted models.")
    model: str
    parameters: GenerationParameters
    usage: Usage | None = Field(default=None, description="Hosted models: tokens and images the call used.")
    provider_parameters: dict[str, Any] | None = Field(
        default=None, description="Hosted models: what was sent to the provider (size, quality, n, ...)."
    )
    timings: Timings

    def summary(self) -> str:
        p = self.parameters
        uris = ", ".join(img.uri for img in self.images)
        first = self.images[0].uri
        if self.seed is None:
            sent = self.provider_parameters or {}
            how = f"{p.width}x{p.height}" + (f", quality {sent['quality']}" if sent.get("quality") else "")
        else:
            how = (
                f"seed {self.seed}, {p.width}x{p.height}, "
                f"{p.steps} steps, {p.scheduler}, guidance {p.guidance_scale}"
            )
        text = (
            f"Generated {len(self.images)} image(s) with {self.model} ({how}) "
            f"in {self.timings.total_seconds:.1f} s: "
            f"{uris}. Next: check it with clip_classify or describe_image (image='{first}'), "
            "or compare_images against another image."
        )
        for img in self.images:
            if img.revised_prompt:
                text += f"\nThe provider rewrote the prompt for {img.uri} as: {img.revised_prompt}"
        return text

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
    steps = steps or d.steps or 30
    resolved = GenerationParameters(
        prompt=prompt,
        negative_prompt=negative_prompt or None,
        width=width or d.width or 512,
        height=height or d.height or 512,
        steps=steps,
        guidance_scale=guidance_scale if guidance_scale is not None else (d.guidance_scale or 0.0),
        scheduler=scheduler or d.scheduler or default_scheduler,
        num_images=num_images,
    )
    check_limit("width", resolved.width, limits.max_side, "ask for a smaller image")
    check_limit("height", resolved.height, limits.max_side, "ask for a smaller image")
    check_limit("steps", steps, limits.max_steps, "use fewer steps")
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
    seeds: list[int] | list[None],
    model: str,
    parameters: GenerationParameters,
    parents: list[str] | None = None,
    extra_parameters: dict[str, object] | None = None,
) -> list[GeneratedImage]:
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
            for image, seed in zip(images, seeds, strict=True)
        ]

    records = await in_thread(write)
    return [
        GeneratedImage(**ImageRef.of(r).model_dump(), seed=s) for r, s in zip(records, seeds, strict=True)
    ]


def refuse_local_only(name: str, spec: ModelSpec, supported: str, **arguments: object) -> None:
    """Local-only arguments given for a hosted model are an error naming what it supports."""
    given = [key for key, value in arguments.items() if value is not None]
    if given:
        raise UnsupportedOperation(
            f"{', '.join(given)}: not supported by hosted model {name!r} ({spec.backend}); it takes "
            f"{supported}. Omit them, or pass a local model (list_models)"
        )


async def store_hosted(
    services: Services,
    result: HostedImages,
    *,
    model: str,
    spec: ModelSpec,
    prompt: str,
    parents: list[str] | None = None,
    extra_parameters: dict[str, object] | None = None,
) -> tuple[list[GeneratedImage], GenerationParameters]:
    """Store a hosted call's images like local ones, with what was sent embedded in each PNG."""
    first = result.images[0]
    parameters = GenerationParameters(
        prompt=prompt,
        negative_prompt=None,
        width=first.width,
        height=first.height,
        steps=None,
        guidance_scale=None,
        scheduler=None,
        num_images=len(result.images),
    )
    revised = result.revised_prompts or [None] * len(result.images)
    refs = []
    for image, rewritten in zip(result.images, revised, strict=True):
        extra = {"backend": spec.backend, "source": spec.source, **result.sent, **(extra_parameters or {})}
        if rewritten:
            extra["revised_prompt"] = rewritten
        one = parameters.model_copy(update={"width": image.width, "height": image.height})
        (ref,) = await store_generated(
            services,
            [image],
            seeds=[None],
            model=model,
            parameters=one,
            parents=parents,
            extra_parameters=extra,
        )
        refs.append(ref.model_copy(update={"revised_prompt": rewritten}))
    return refs, parameters


async def _generate_hosted(
    params: GenerateImageParams, services: Services, name: str, spec: ModelSpec
) -> GenerateImageResult:
    clock = Clock()
    refuse_local_only(
        name,
        spec,
        "prompt, width/height (its sizes), num_images and quality",
        negative_prompt=params.negative_prompt,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        scheduler=params.scheduler,
        seed=params.seed,
    )
    limits = services.config.server.limits
    check_limit("num_images", params.num_images, limits.max_images, "make fewer images per call")
    if len(params.prompt) > limits.max_prompt_chars:
        raise InvalidArgument(
            f"the prompt is {len(params.prompt)} characters; the limit is {limits.max_prompt_chars}"
        )
    model = services.hosted.image_model(name, spec)
    async with clock.infer():
        result = await model.generate(
            params.prompt,
            width=params.width,
            height=params.height,
            quality=params.quality,
            n=params.num_images,
        )
    refs, parameters = await store_hosted(services, result, model=name, spec=spec, prompt=params.prompt)
    return GenerateImageResult(
        images=refs,
        seed=None,
        model=name,
        parameters=parameters,
        usage=result.usage,
        provider_parameters=result.sent,
        timings=clock.timings(),
    )


def generation_request(
    parameters: GenerationParameters, seeds: list[int], controls: tuple[ControlInput, ...] = ()
) -> GenerationRequest:
    # Local parameters always have these (only hosted models leave them null).
    assert parameters.steps is not None and parameters.guidance_scale is not None and parameters.scheduler
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
    """Generate images from a text prompt with a local text-to-image model (Stable Diffusion, SDXL,
    Flux) or a hosted one (gpt-image-1, dall-e-3, gemini-2.5-flash-image; see list_models).

    Every image is stored and returned with an id: pass 'image://<id>' to clip_classify,
    describe_image or compare_images to check it, or reuse the seed to refine the prompt while
    keeping the composition. Omitted arguments use the model's configured defaults
    (see list_models). Flux models take no negative prompt and use guidance 0. Hosted models
    take prompt, width/height from their own sizes (gpt-image-1: 1024x1024, 1536x1024,
    1024x1536; dall-e-3: 1024x1024, 1792x1024, 1024x1792, one image per call;
    gemini-2.5-flash-image: 1024x1024, 1344x768, 768x1344 and other aspect ratios), num_images
    and quality (OpenAI), but no seed, steps, guidance or scheduler.
    """
    # 1. Check inputs
    name, spec = pick_model(services.config, params.model, "text_to_image", "text_to_image")
    if spec.hosted:
        return await _generate_hosted(params, services, name, spec)
    refuse_hosted_only(name, spec, quality=params.quality)
    clock = Clock()
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
    refs = await store_generated(services, images, seeds=seeds, model=name, parameters=parameters)
    return GenerateImageResult(
        images=refs, seed=seed, model=name, parameters=parameters, timings=clock.timings()
    )
