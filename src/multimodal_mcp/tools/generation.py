"""The generation sequence, written once: what generate_image and controlled_generate compose.

1. ``plan``: check the arguments against the model's capabilities and the server's limits, fill in
   the model's defaults, draw the seeds.
2. ``confirm_and_rewrite``: confirm the paid models with the user before any work; rewrite the prompt
   when asked (enhance_prompt).
3. ``run``: generate through the model's handle (wherever it runs), verify against the prompt the
   caller wrote, screen with the safety filter and store what passes, with every parameter recorded.

Also the argument types and the result both tools share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Annotated, Any, Literal, NamedTuple

from PIL import Image
from pydantic import BaseModel, Field, WithJsonSchema

from multimodal_mcp.backends.schedulers import ALL_SCHEDULERS
from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.config import Limits
from multimodal_mcp.errors import BackendError, InvalidArgument
from multimodal_mcp.handles import Adjustment, GeneratedImages, ImageRequest, Usage, Verdict
from multimodal_mcp.imaging.shaping import fit_size
from multimodal_mcp.imaging.store import ImageRecord
from multimodal_mcp.tools.common import (
    Clock,
    ImageRef,
    Params,
    Progress,
    Result,
    Services,
    Timings,
    approve_spending,
    check_limit,
    draw_seed,
    given_arguments,
    in_thread,
)
from multimodal_mcp.tools.prompting import PromptRewrite, pick_rewriter, rewrite_prompt, rewrite_purchase
from multimodal_mcp.tools.verification import (
    ImageVerification,
    Level,
    check_labels,
    check_level,
    level_of,
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
        description="What the image should show.",
    ),
]
NegativePrompt = Annotated[
    str | None,
    Field(
        max_length=4000,
        description="What the image should not show.",
    ),
]
MIN_SIDE = 64
Side = Annotated[
    int | None,
    Field(
        ge=MIN_SIDE,
        le=4096,
        multiple_of=8,
        description="Pixels, at most the server's max_side.",
    ),
]
Steps = Annotated[
    int | None,
    Field(
        ge=1,
        le=200,
        description="At most the server's max_steps.",
    ),
]
Guidance = Annotated[
    float | None,
    Field(
        ge=0.0,
        le=30.0,
        description="Higher follows the prompt more closely.",
    ),
]
Scheduler = Annotated[
    SchedulerName | None,
    Field(description="One the model lists (list_models)."),
    # The names are advertised per model by list_models; all of them here would read as if any model
    # took any. Validation still checks the name.
    WithJsonSchema({"anyOf": [{"type": "string", "maxLength": 32}, {"type": "null"}]}),
]
Seed = Annotated[
    int | None,
    Field(
        ge=0,
        le=2**32 - 1,
        description="Omit for a random one; reuse it to repeat an image.",
    ),
]
NumImages = Annotated[
    int,
    Field(
        ge=1,
        le=16,
        description="At most the server's max_images; image i uses seed + i.",
    ),
]
EnhancePrompt = Annotated[
    bool,
    Field(description="Expand a terse prompt with a text model first."),
]


class GeneratedImage(ImageRef):
    seed: int | None = Field(
        description=(
            "This image's own seed: generate_image with it and num_images=1 gives the same image again "
            "(up to rounding in the last bit of a few pixels, since batches are computed together). "
            "Null for models that take no seed (list_models: capabilities)."
        )
    )
    revised_prompt: str | None = Field(
        default=None,
        description="The prompt as the model's provider rewrote it before generating, where it reports one.",
    )


class WithheldImage(BaseModel):
    seed: int | None = Field(
        description="The seed of the image that was withheld (null for models that take no seed)."
    )
    category: str = Field(description="What the safety filter flagged, e.g. 'nsfw'.")
    reason: str


class AppliedLora(BaseModel):
    name: str
    scale: float


class GenerationParameters(Params):
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int | None = Field(description="Null for models that take no steps.")
    guidance_scale: float | None = Field(description="Null for models that take no guidance scale.")
    scheduler: str | None = Field(description="Null for models that take no scheduler.")
    num_images: int
    loras: list[AppliedLora] | None = Field(default=None, description="LoRAs applied, scale as used.")


class GenerationResult(Result):
    """What a generation tool returns (generate_image's result; controlled_generate adds to it)."""

    images: list[GeneratedImage]
    seed: int | None = Field(
        description="The base seed (image i used seed + i); null for models that take no seed."
    )
    model: str
    parameters: GenerationParameters
    usage: Usage | None = Field(
        default=None, description="Metered (hosted) models: tokens and images the call used."
    )
    provider_parameters: dict[str, Any] | None = Field(
        default=None, description="Hosted models: what was sent to the provider (size, quality, n, ...)."
    )
    timings: Timings
    verification: list[ImageVerification] | None = Field(
        default=None, description="With verify: one check per image, in the order of images."
    )
    prompt_rewrite: PromptRewrite | None = Field(
        default=None,
        description="With enhance_prompt: the original prompt and the rewritten one the images came from.",
    )
    withheld: list[WithheldImage] = Field(
        default_factory=list,
        description="Images the server's safety filter withheld (not stored, no id); empty when none.",
    )
    adjustments: list[Adjustment] = Field(
        default_factory=list,
        description="What was changed, cut or not used of the arguments (an input resized, prompt text "
        "past the text encoder's window, denoising steps skipped); empty when nothing was.",
    )

    def summary(self) -> str:
        return self._generation_text() + self._adjustments_text() + self._verification_text()

    def _adjustments_text(self) -> str:
        return "".join(f"\nNote: {a.message}" for a in self.adjustments)

    def _generation_text(self) -> str:
        p = self.parameters
        quality = (self.provider_parameters or {}).get("quality")
        settings = [
            f"seed {self.seed}" if self.seed is not None else None,
            f"{p.width}x{p.height}",
            f"{p.steps} steps" if p.steps is not None else None,
            p.scheduler,
            f"guidance {p.guidance_scale}" if p.guidance_scale is not None else None,
            f"quality {quality}" if quality else None,
        ]  # only what the model takes
        how = ", ".join(s for s in settings if s)
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


# --- the sequence ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A checked generation, ready to confirm and run: the model, what it will be asked, the seeds."""

    model: str
    capabilities: Capabilities
    parameters: GenerationParameters
    """What the images are made with; width/height 0 while the model is to choose them."""
    seed: int | None
    seeds: tuple[int, ...] | None
    quality: str | None
    verify: Level | None
    verify_labels: list[str] | None
    enhance_prompt: bool
    clock: Clock
    rewrite: PromptRewrite | None = None


def plan(
    services: Services,
    model: str,
    params: Params,
    *,
    width: int | None = None,
    height: int | None = None,
    edit: bool = False,
) -> Plan:
    """Check a generation before any work and fill in the model's defaults.

    ``params`` are the tool's arguments (the generation fields: prompt, negative_prompt, steps,
    guidance_scale, scheduler, num_images, seed, quality, verify, verify_labels, enhance_prompt, as
    far as the tool has them). The ones the caller gave are checked against the model's
    capabilities: an argument it does not honour is an error naming the models that do.
    ``width``/``height`` are the size to make (given, or worked out by the tool from its inputs);
    None takes the model's configured default, or, for a fixed-size model editing a picture
    (``edit``), lets the model choose.

    Raises:
        UnsupportedOperation: an argument the model does not honour.
        InvalidArgument: a value over the server's limits or outside what the model takes.
    """
    check_arguments(services, model, params)
    hub = services.hub

    def field(name: str, default: Any = None) -> Any:
        return getattr(params, name, default)

    prompt, negative_prompt, steps = field("prompt"), field("negative_prompt"), field("steps")
    guidance_scale, scheduler, seed = field("guidance_scale"), field("scheduler"), field("seed")
    num_images, verify_labels = field("num_images", 1), field("verify_labels")
    caps = hub.capabilities(model)
    spec = hub.spec(model)
    limits = services.config.server.limits
    d = spec.defaults
    # Sizes: what was given, else the config's defaults; free-size models always have one.
    if caps.sizes is not None and caps.sizes.multiple_of is not None:
        width, height = width or d.width or 512, height or d.height or 512
    elif caps.sizes is not None and not edit and width is None and height is None:
        width, height = d.width, d.height
    resolved_steps = (steps or d.steps or 30) if caps.steps else None
    multiple = caps.sizes.multiple_of if caps.sizes is not None else None
    for side, value in (("width", width), ("height", height)):
        if value is not None and value > limits.max_side:
            hint = f"use {side}={limits.max_side - limits.max_side % (multiple or 1)} or less"
            if field("width") and field("height") and width and height and multiple:
                w, h = fitting_size(limits, width, height, resolved_steps or 1, num_images, multiple)
                hint = f"use width={w}, height={h} (the same aspect ratio within this server's limits)"
            check_limit(side, value, limits.max_side, hint)
    if caps.sizes is not None:
        try:
            width, height = caps.sizes.resolve(model, width, height)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
    if resolved_steps is not None:
        check_limit("steps", resolved_steps, limits.max_steps, f"use steps={limits.max_steps} or fewer")
        if width and height:
            check_budget(limits, width, height, resolved_steps, num_images, multiple or 8)
    base_seed = (seed if seed is not None else draw_seed()) if caps.seed else None
    parameters = GenerationParameters(
        prompt=prompt,
        negative_prompt=(negative_prompt or None) if caps.negative_prompt else None,
        width=width or 0,
        height=height or 0,
        steps=resolved_steps,
        guidance_scale=(guidance_scale if guidance_scale is not None else (d.guidance_scale or 0.0))
        if caps.guidance_scale
        else None,
        scheduler=(scheduler or d.scheduler or caps.schedulers[0]) if caps.schedulers else None,
        num_images=num_images,
    )
    return Plan(
        model=model,
        capabilities=caps,
        parameters=parameters,
        seed=base_seed,
        seeds=tuple((base_seed + i) % 2**32 for i in range(num_images)) if base_seed is not None else None,
        quality=field("quality"),
        verify=level_of(field("verify", False)),
        verify_labels=verify_labels,
        enhance_prompt=bool(field("enhance_prompt", False)),
        clock=Clock(),
    )


def check_arguments(services: Services, model: str, params: Params) -> None:
    """The server's limits on a generation's arguments (prompt length, images, labels), then the
    model's capabilities: what the caller gave and the model does not honour is refused."""
    limits = services.config.server.limits
    for argument in ("prompt", "negative_prompt"):
        text = getattr(params, argument, None) or ""
        if len(text) > limits.max_prompt_chars:
            raise InvalidArgument(
                f"the {argument} is {len(text)} characters; this server's limit is {limits.max_prompt_chars} "
                "(max_prompt_chars); shorten it"
            )
    check_limit(
        "num_images", getattr(params, "num_images", 1), limits.max_images, "make fewer images per call"
    )
    check_labels(services, getattr(params, "verify_labels", None))
    check_level(services, getattr(params, "verify", None))
    services.hub.check(model, given_arguments(params))


def check_budget(
    limits: Limits, width: int, height: int, steps: int, num_images: int, multiple: int = 8
) -> None:
    """The per-call budgets: pixels (width*height*num_images) and compute (times steps). The error
    names calls that fit: fewer steps or images, or a size (in multiples of ``multiple``)."""
    pixels = width * height * num_images
    w, h = fitting_size(limits, width, height, steps, num_images, multiple)
    smaller = f"width={w}, height={h}" if min(w, h) >= MIN_SIDE else ""
    if pixels > limits.max_pixels_per_call:
        fewer = limits.max_pixels_per_call // (width * height)
        instead = " or ".join(o for o in (f"num_images={fewer}" if fewer >= 1 else "", smaller) if o)
        raise InvalidArgument(
            f"width*height*num_images = {width}*{height}*{num_images} = {pixels} pixels exceeds this "
            f"server's limit of {limits.max_pixels_per_call} per call (max_pixels_per_call); make fewer "
            "or smaller images" + (f": {instead}" if instead else "")
        )
    work = pixels * steps
    if work > limits.max_pixel_steps_per_call:
        options = [
            f"steps={limits.max_pixel_steps_per_call // pixels}"
            if limits.max_pixel_steps_per_call >= pixels
            else "",
            f"num_images={limits.max_pixel_steps_per_call // (width * height * steps)}"
            if num_images > 1 and limits.max_pixel_steps_per_call >= width * height * steps
            else "",
            smaller,
        ]
        raise InvalidArgument(
            f"width*height*steps*num_images = {width}*{height}*{steps}*{num_images} = {work} exceeds this "
            f"server's compute budget of {limits.max_pixel_steps_per_call} per call "
            "(max_pixel_steps_per_call); use fewer steps, fewer images or a smaller size "
            f"({' or '.join(o for o in options if o) or 'smaller than the budget allows here'}), or split "
            "the work over several calls"
        )


def fitting_size(
    limits: Limits, width: int, height: int, steps: int, num_images: int, multiple: int
) -> tuple[int, int]:
    """The largest size with ``width``/``height``'s aspect ratio, in multiples of ``multiple``, that
    this server's limits accept for ``num_images`` images of ``steps`` steps."""
    room = min(
        limits.max_pixels_per_call // num_images, limits.max_pixel_steps_per_call // (steps * num_images)
    )
    size, _ = fit_size((width, height), multiple, max_side=limits.max_side, max_pixels=room)
    return size


def purchase(parameters: GenerationParameters, *, edit: bool = False) -> str:
    """What a generation buys from a paid model, as the user is asked about it."""
    n = parameters.num_images
    images = f"{n} {'edited ' if edit else ''}image{'s' if n != 1 else ''}"
    return f"{images} of {parameters.width}x{parameters.height}" if parameters.width else images


async def confirm_and_rewrite(
    services: Services, planned: Plan, *, edit: bool = False, progress: Progress | None = None
) -> Plan:
    """Confirm the paid models a generation uses (before any work), then rewrite the prompt if asked.

    Returns the plan to run (the rewritten prompt in place of the original).
    """
    rewriter = pick_rewriter(services.config) if planned.enhance_prompt else None
    await approve_spending(services, planned.model, purchase(planned.parameters, edit=edit))
    if rewriter is None:
        return planned
    await approve_spending(services, rewriter, rewrite_purchase(services, rewriter))
    rewrite = await rewrite_prompt(services, planned.clock, rewriter, planned.parameters.prompt, progress)
    parameters = planned.parameters.model_copy(update={"prompt": rewrite.prompt})
    return replace(planned, parameters=parameters, rewrite=rewrite)


class Outcome(NamedTuple):
    """What ``run`` made and kept."""

    images: list[GeneratedImage]
    withheld: list[WithheldImage]
    verification: list[ImageVerification] | None
    parameters: GenerationParameters
    usage: Usage | None
    sent: dict[str, Any] | None
    adjustments: list[Adjustment]


async def run(
    services: Services,
    planned: Plan,
    request: ImageRequest,
    *,
    parents: list[str] | None = None,
    extra_parameters: dict[str, object] | None = None,
    adjustments: list[Adjustment] | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Generate, verify, screen and store.

    ``request`` carries what the tool adds (init image, mask, controls, references); the plan's
    parameters fill the rest. Verification scores each image against the prompt the caller wrote
    (not a rewrite). Withheld images are never stored. ``adjustments`` (what the tool changed of
    its arguments) come back in the outcome followed by the model's own.
    """
    p = planned.parameters
    request = replace(
        request,
        prompt=p.prompt,
        num_images=p.num_images,
        negative_prompt=p.negative_prompt,
        width=p.width or None,
        height=p.height or None,
        steps=p.steps,
        guidance_scale=p.guidance_scale,
        scheduler=p.scheduler,
        seeds=planned.seeds,
        quality=planned.quality,
    )
    generator = services.hub.image_generator(planned.model)
    clock = planned.clock
    async with clock.infer():
        made = await generator.generate(request, progress=progress)
    clock.loaded(made.load_seconds)
    _check_count(planned.model, made, p.num_images)
    adjustments = [*(adjustments or []), *made.adjustments]
    if len(made.images) < p.num_images:
        adjustments.append(
            Adjustment(
                argument="num_images",
                message=f"{len(made.images)} of the {p.num_images} images asked for came back: model "
                f"{planned.model!r} returned fewer.",
            )
        )

    checks = None
    if planned.verify or planned.verify_labels:
        async with clock.infer():
            asked = planned.rewrite.original if planned.rewrite else p.prompt
            level = planned.verify or "fast"
            checks = await verify_images(services, made.images, asked, planned.verify_labels, level)

    extra = {**(extra_parameters or {}), **(planned.rewrite.stored() if planned.rewrite else {})}
    if made.sent:
        spec = services.hub.spec(planned.model)
        extra = {"backend": spec.backend, "source": spec.source, **made.sent, **extra}
    first = made.images[0]
    parameters = p.model_copy(update={"width": first.width, "height": first.height}) if not p.width else p
    if not p.width:
        parameters = parameters.model_copy(update={"num_images": len(made.images)})
    stored = await store_generated(
        services,
        made.images,
        seeds=list(planned.seeds)[: len(made.images)] if planned.seeds else [None] * len(made.images),
        model=planned.model,
        parameters=parameters,
        parents=parents,
        extra_parameters=extra,
        verification=checks,
        revised_prompts=made.revised_prompts,
    )
    return Outcome(
        stored.images,
        stored.withheld,
        stored.verification,
        parameters,
        made.usage,
        made.sent or None,
        adjustments,
    )


def _check_count(model: str, made: GeneratedImages, asked: int) -> None:
    if not made.images:
        raise BackendError(f"model {model!r} returned no image; try again")
    if len(made.images) > asked:
        del made.images[asked:]


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
    revised_prompts: list[str | None] | None = None,
) -> Stored:
    """Pass generated images through the safety filter (when on) and store those it lets through;
    with ``verification`` each image's scores are stored in its record and PNG
    (``parameters.verification``). Each image is recorded with its own size and, where the provider
    rewrote the prompt, that rewrite.

    A withheld image is never written: it gets no id, so no resource or tool can serve it.
    """
    verdicts = await _screen(services, images)
    revised = list(revised_prompts or []) + [None] * (len(images) - len(revised_prompts or []))
    per_image: list[dict[str, object]] = []
    for i, image in enumerate(images):
        own: dict[str, object] = {"width": image.width, "height": image.height}
        if verification is not None:
            own["verification"] = verification[i].model_dump(exclude={"image_id"})
        if revised[i]:
            own["revised_prompt"] = revised[i]
        per_image.append(own)

    def write() -> list[ImageRecord]:
        recorded = {
            **parameters.model_dump(exclude={"prompt", "negative_prompt", "loras"}),
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
    kept = [(s, r) for s, r, v in zip(seeds, revised, verdicts, strict=True) if not v.flagged]
    withheld = [
        WithheldImage(seed=s, category=v.category, reason=v.reason)
        for s, v in zip(seeds, verdicts, strict=True)
        if v.flagged
    ]
    refs = [
        GeneratedImage(**ImageRef.of(record).model_dump(), seed=seed, revised_prompt=rewritten)
        for record, (seed, rewritten) in zip(records, kept, strict=True)
    ]
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
        return await gate.screen(images)
    except Exception as exc:
        # Fail closed: an image the filter could not check is not returned.
        logger.error("the safety filter failed; withholding %d image(s)", len(images), exc_info=exc)
        raise BackendError(
            f"the server's safety filter could not check the {len(images)} generated image(s), so none "
            "was stored or returned; try again, and tell the server's operator if it keeps failing"
        ) from None


def result_fields(planned: Plan, outcome: Outcome) -> dict[str, Any]:
    """The fields of a :class:`GenerationResult` both tools fill the same way."""
    return {
        "images": outcome.images,
        "seed": planned.seed,
        "model": planned.model,
        "parameters": outcome.parameters,
        "usage": outcome.usage,
        "provider_parameters": outcome.sent,
        "timings": planned.clock.timings(),
        "withheld": outcome.withheld,
        "verification": outcome.verification,
        "prompt_rewrite": planned.rewrite,
        "adjustments": outcome.adjustments,
    }
