"""generate_image: text to image with a local diffusion or flow-matching model, or a hosted one."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, NamedTuple

from PIL import Image
from pydantic import BaseModel, Field

from multimodal_mcp.backends.base import CancelToken, ControlInput, GenerationRequest, StepCallback
from multimodal_mcp.backends.hosted import HostedImages, Usage
from multimodal_mcp.backends.safety import Verdict
from multimodal_mcp.backends.schedulers import ALL_SCHEDULERS
from multimodal_mcp.config import Limits, ModelSpec
from multimodal_mcp.errors import BackendError, InvalidArgument, UnsupportedOperation
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
    approve_spending,
    check_limit,
    draw_seed,
    in_thread,
    pick_model,
    refuse_hosted_only,
)
from multimodal_mcp.tools.prompting import PromptRewrite, pick_rewriter, rewrite_prompt, rewrite_purchase
from multimodal_mcp.tools.verification import (
    ImageVerification,
    Verify,
    VerifyLabels,
    check_labels,
    verification_summary,
    verify_images,
)

logger = logging.getLogger(__name__)

SchedulerName = Literal[ALL_SCHEDULERS]  # type: ignore[valid-type]

Prompt = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4000,
        description="What the image should show; at most 4000 characters (server limit max_prompt_chars).",
    ),
]
NegativePrompt = Annotated[
    str | None,
    Field(
        max_length=4000,
        description="What the image should not show (diffusion models only; not Flux); at most 4000 "
        "characters.",
    ),
]
Side = Annotated[
    int | None,
    Field(
        ge=64,
        le=4096,
        multiple_of=8,
        description="Pixels, 64-4096 and at most the server's max_side (default 2048); a multiple of 8 "
        "(16 for Flux). Omit for the model's default.",
    ),
]
Steps = Annotated[
    int | None,
    Field(
        ge=1,
        le=200,
        description="Denoising steps, 1-200 and at most the server's max_steps (default 100); omit for the "
        "model's default.",
    ),
]
Guidance = Annotated[
    float | None,
    Field(
        ge=0.0,
        le=30.0,
        description="Classifier-free guidance scale, 0-30; higher follows the prompt more closely.",
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
NumImages = Annotated[
    int,
    Field(
        ge=1,
        le=16,
        description="How many images to make, at most the server's max_images (default 4); image i uses "
        "seed + i.",
    ),
]
EnhancePrompt = Annotated[
    bool,
    Field(
        description=(
            "First rewrite the prompt into a detailed one (subject, style, lighting, composition) with the "
            "server's text model, then generate from that; the rewritten prompt is returned and stored. "
            "For terse prompts."
        )
    ),
]
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
    verify: Verify = False
    verify_labels: VerifyLabels = None
    enhance_prompt: EnhancePrompt = False
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


class WithheldImage(BaseModel):
    seed: int | None = Field(description="The seed of the image that was withheld (null for hosted models).")
    category: str = Field(description="What the safety filter flagged, e.g. 'nsfw'.")
    reason: str


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
    verification: list[ImageVerification] | None = Field(
        default=None, description="With verify=True: one check per image, in the order of images."
    )
    prompt_rewrite: PromptRewrite | None = Field(
        default=None,
        description="With enhance_prompt: the original prompt and the rewritten one the images came from.",
    )
    withheld: list[WithheldImage] = Field(
        default_factory=list,
        description="Images the server's safety filter withheld (not stored, no id); empty when none.",
    )

    def summary(self) -> str:
        return self._generation_text() + self._verification_text()

    def _generation_text(self) -> str:
        p = self.parameters
        if self.seed is None:
            sent = self.provider_parameters or {}
            how = f"{p.width}x{p.height}" + (f", quality {sent['quality']}" if sent.get("quality") else "")
        else:
            how = (
                f"seed {self.seed}, {p.width}x{p.height}, "
                f"{p.steps} steps, {p.scheduler}, guidance {p.guidance_scale}"
            )
        made = f"with {self.model} ({how}) in {self.timings.total_seconds:.1f} s"
        notice = self.withheld_notice()
        if not self.images:
            return f"Generated no image to return {made}: {notice} Try a different prompt."
        uris = ", ".join(img.uri for img in self.images)
        first = self.images[0].uri
        text = f"Generated {len(self.images)} image(s) {made}: {uris}."
        if self.prompt_rewrite:
            text += self.prompt_rewrite.summary()
        if notice:
            text += f" {notice}"
        text += (
            f" Next: check it with clip_classify or describe_image (image='{first}'), "
            "or compare_images against another image."
        )
        for img in self.images:
            if img.revised_prompt:
                text += f"\nThe provider rewrote the prompt for {img.uri} as: {img.revised_prompt}"
        return text

    def _verification_text(self) -> str:
        if self.verification is None:
            return ""
        return "\n" + verification_summary(self.verification, [img.seed for img in self.images])

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
    check_budget(limits, resolved.width, resolved.height, steps, num_images)
    for argument, text in (("prompt", prompt), ("negative_prompt", negative_prompt or "")):
        if len(text) > limits.max_prompt_chars:
            raise InvalidArgument(
                f"the {argument} is {len(text)} characters; this server's limit is {limits.max_prompt_chars} "
                "(max_prompt_chars); shorten it"
            )
    return resolved


def check_budget(limits: Limits, width: int, height: int, steps: int, num_images: int) -> None:
    """The per-call budgets: pixels (width*height*num_images) and compute (times steps)."""
    pixels = width * height * num_images
    if pixels > limits.max_pixels_per_call:
        raise InvalidArgument(
            f"width*height*num_images = {width}*{height}*{num_images} = {pixels} pixels exceeds this "
            f"server's limit of {limits.max_pixels_per_call} per call (max_pixels_per_call); make fewer "
            "or smaller images"
        )
    work = pixels * steps
    if work > limits.max_pixel_steps_per_call:
        raise InvalidArgument(
            f"width*height*steps*num_images = {width}*{height}*{steps}*{num_images} = {work} exceeds this "
            f"server's compute budget of {limits.max_pixel_steps_per_call} per call "
            "(max_pixel_steps_per_call); use fewer steps, fewer images or a smaller size, or split the "
            "work over several calls"
        )


class Stored(NamedTuple):
    """What store_generated kept: the stored images, those the safety filter withheld, and the
    kept images' verification (ids filled in; None without verify)."""

    images: list[GeneratedImage]
    withheld: list[WithheldImage]
    verification: list[ImageVerification] | None


async def store_generated(
    services: Services,
    images: list[Image.Image],
    *,
    seeds: list[int] | list[None],
    model: str,
    parameters: GenerationParameters,
    parents: list[str] | None = None,
    extra_parameters: dict[str, object] | None = None,
    verification: list[ImageVerification] | None = None,
) -> Stored:
    """Pass generated images through the safety filter (when on) and store those it lets through;
    with ``verification`` each image's scores are stored in its record and PNG
    (``parameters.verification``).

    A withheld image is never written: it gets no id, so no resource or tool can serve it.
    """
    verdicts = await _screen(services, images)
    per_image: list[dict[str, object]] = (
        [{"verification": v.model_dump(exclude={"image_id"})} for v in verification]
        if verification is not None
        else [{} for _ in images]
    )

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
                parameters={**recorded, **own},
                parents=parents,
            )
            for image, seed, own, verdict in zip(images, seeds, per_image, verdicts, strict=True)
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
    checks = None
    if verification is not None:  # the kept images' checks, with the ids they got
        kept_checks = [c for c, v in zip(verification, verdicts, strict=True) if not v.flagged]
        checks = [c.model_copy(update={"image_id": r.id}) for c, r in zip(kept_checks, refs, strict=True)]
    return Stored(refs, withheld, checks)


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


def images_purchase(parameters: GenerationParameters) -> str:
    """What a generation buys from a paid model, as the user is asked about it."""
    n = parameters.num_images
    return f"{n} image{'s' if n != 1 else ''} of {parameters.width}x{parameters.height}"


async def confirm_and_rewrite(
    services: Services,
    clock: Clock,
    *,
    model: str,
    spec: ModelSpec,
    parameters: GenerationParameters,
    enhance_prompt: bool,
    progress: Progress | None,
) -> tuple[GenerationParameters, PromptRewrite | None]:
    """Confirm the paid models a generation uses (before any work), then rewrite the prompt if asked.

    Returns the parameters to generate with (the rewritten prompt in place of the original).
    """
    rewriter = pick_rewriter(services.config) if enhance_prompt else None
    await approve_spending(services, model, spec, images_purchase(parameters))
    if rewriter is None:
        return parameters, None
    text_model, text_spec = rewriter
    await approve_spending(services, text_model, text_spec, rewrite_purchase(services.config, text_spec))
    rewrite = await rewrite_prompt(services, clock, text_model, text_spec, parameters.prompt, progress)
    return parameters.model_copy(update={"prompt": rewrite.prompt}), rewrite


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
    verification: list[ImageVerification] | None = None,
) -> tuple[Stored, GenerationParameters]:
    """Store a hosted call's images like local ones (past the safety filter, when on), with what was
    sent embedded in each PNG."""
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
    checks: list[ImageVerification | None] = list(verification) if verification else [None] * len(revised)
    kept = Stored([], [], [] if verification else None)
    for image, rewritten, check in zip(result.images, revised, checks, strict=True):
        extra = {"backend": spec.backend, "source": spec.source, **result.sent, **(extra_parameters or {})}
        if rewritten:
            extra["revised_prompt"] = rewritten
        one = parameters.model_copy(update={"width": image.width, "height": image.height})
        stored = await store_generated(
            services,
            [image],
            seeds=[None],
            model=model,
            parameters=one,
            parents=parents,
            extra_parameters=extra,
            verification=[check] if check is not None else None,
        )
        kept.images.extend(ref.model_copy(update={"revised_prompt": rewritten}) for ref in stored.images)
        kept.withheld.extend(stored.withheld)
        if kept.verification is not None and stored.verification:
            kept.verification.extend(stored.verification)
    return kept, parameters


async def _generate_hosted(
    params: GenerateImageParams, services: Services, name: str, spec: ModelSpec, progress: Progress | None
) -> GenerateImageResult:
    # 1. Check inputs
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
            f"the prompt is {len(params.prompt)} characters; this server's limit is "
            f"{limits.max_prompt_chars} (max_prompt_chars); shorten it"
        )
    check_labels(services, params.verify_labels)
    rewriter = pick_rewriter(services.config) if params.enhance_prompt else None

    # 2. Confirm the paid calls with the user before any work; rewrite the prompt if asked
    n = params.num_images
    width = params.width or spec.defaults.width or 1024
    height = params.height or spec.defaults.height or 1024
    await approve_spending(services, name, spec, f"{n} image{'s' if n != 1 else ''} of {width}x{height}")
    prompt, rewrite = params.prompt, None
    if rewriter is not None:
        text_model, text_spec = rewriter
        await approve_spending(services, text_model, text_spec, rewrite_purchase(services.config, text_spec))
        rewrite = await rewrite_prompt(services, clock, text_model, text_spec, params.prompt, progress)
        prompt = rewrite.prompt

    # 3. Generate on the provider (no device lane)
    model = services.hosted.image_model(name, spec)
    async with clock.infer():
        result = await model.generate(
            prompt, width=params.width, height=params.height, quality=params.quality, n=params.num_images
        )

    # 4. Verify with the local CLIP model, against what the caller asked for
    checks = None
    if params.verify or params.verify_labels:
        async with clock.infer():
            checks = await verify_images(services, result.images, params.prompt, params.verify_labels)

    # 5. Store (past the safety filter, when on) and describe
    stored, parameters = await store_hosted(
        services,
        result,
        model=name,
        spec=spec,
        prompt=prompt,
        extra_parameters=rewrite.stored() if rewrite else None,
        verification=checks,
    )
    return GenerateImageResult(
        images=stored.images,
        seed=None,
        model=name,
        parameters=parameters,
        usage=result.usage,
        provider_parameters=result.sent,
        timings=clock.timings(),
        withheld=stored.withheld,
        verification=stored.verification,
        prompt_rewrite=rewrite,
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
    Flux) or a hosted one (gpt-image-2, dall-e-3, gemini-2.5-flash-image; see list_models).

    Each call has a budget of width*height*num_images pixels and width*height*steps*num_images
    pixel-steps; an error names the limit when a call goes over it.

    Every image is stored and returned with an id: pass 'image://<id>' to clip_classify,
    describe_image or compare_images to check it, or reuse the seed to refine the prompt while
    keeping the composition. Omitted arguments use the model's configured defaults
    (see list_models). Flux models take no negative prompt and use guidance 0.
    verify=True scores each image against the prompt with CLIP (and checks verify_labels, the things
    it must show); the result says which passed and what is missing, so you can revise the prompt.
    enhance_prompt=True first has a text model expand a terse prompt into a detailed one (subject,
    style, lighting, composition); the result returns both prompts, and the images are stored with
    both. Pass the returned prompt (without enhance_prompt) and the seed to repeat an image exactly.
    Hosted models take prompt, width/height from their own sizes (gpt-image-2/-1: 1024x1024,
    1536x1024, 1024x1536; dall-e-3: 1024x1024, 1792x1024, 1024x1792, one image per call;
    gemini-2.5-flash-image: 1024x1024, 1344x768, 768x1344 and other aspect ratios), num_images
    and quality (OpenAI), but no seed, steps, guidance or scheduler.
    If the server runs a safety filter, images it flags are withheld (not stored, no id) and the
    result's 'withheld' list says how many and why.
    """
    # 1. Check inputs
    name, spec = pick_model(services.config, params.model, "text_to_image", "text_to_image")
    if spec.hosted:
        return await _generate_hosted(params, services, name, spec, progress)
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
    check_labels(services, params.verify_labels)
    seed = params.seed if params.seed is not None else draw_seed()
    seeds = [(seed + i) % 2**32 for i in range(params.num_images)]

    # 2. Confirm paid models with the user before any work; rewrite the prompt if asked
    parameters, rewrite = await confirm_and_rewrite(
        services,
        clock,
        model=name,
        spec=spec,
        parameters=parameters,
        enhance_prompt=params.enhance_prompt,
        progress=progress,
    )
    request = generation_request(parameters, seeds)

    # 3. Get the model, check what only the model knows (size multiples, sampler family)
    async with clock.use(services, name) as model:
        model.check(request)

        # 4. Denoise on the model's device lane (queued in order, cancellable between steps)
        async with clock.infer():
            images = await services.pool.run(model, _denoise(request), progress=progress)

    # 4. Verify with CLIP (before storing: the scores are stored with each image)
    checks = None
    if params.verify or params.verify_labels:
        async with clock.infer():
            # Scored against what the caller asked for, not the rewrite that elaborates on it.
            asked = rewrite.original if rewrite else parameters.prompt
            checks = await verify_images(services, images, asked, params.verify_labels)

    # 5. Store (past the safety filter, when on) and describe
    stored = await store_generated(
        services,
        images,
        seeds=seeds,
        model=name,
        parameters=parameters,
        verification=checks,
        extra_parameters=rewrite.stored() if rewrite else None,
    )
    return GenerateImageResult(
        images=stored.images,
        seed=seed,
        model=name,
        parameters=parameters,
        timings=clock.timings(),
        withheld=stored.withheld,
        verification=stored.verification,
        prompt_rewrite=rewrite,
    )
