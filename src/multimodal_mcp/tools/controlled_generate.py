"""controlled_generate: generation steered by pictures: ControlNet maps, img2img, inpainting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from multimodal_mcp.errors import InvalidArgument
from multimodal_mcp.handles import Adjustment, ControlCondition, ImageRequest, ReferenceCondition
from multimodal_mcp.imaging.inputs import ResolvedImage
from multimodal_mcp.imaging.normalize import MaskError, MaskReading, control_map, picture, read_mask
from multimodal_mcp.imaging.shaping import (
    DEFAULT_RESIZE_MODE,
    Fit,
    ResizeMode,
    fit_size,
    place,
    plan_fit,
    scale,
    shape,
    shape_mask,
)
from multimodal_mcp.imaging.store import ImageRecord
from multimodal_mcp.tools import generation
from multimodal_mcp.tools.common import (
    ImageArg,
    ImageRef,
    ModelArg,
    Params,
    Progress,
    Services,
    in_thread,
    keep_inputs,
    resolve_image,
)
from multimodal_mcp.tools.generation import (
    MIN_SIDE,
    EnhancePrompt,
    GenerationResult,
    Guidance,
    NegativePrompt,
    NumImages,
    Prompt,
    Scheduler,
    Seed,
    Side,
    Steps,
)
from multimodal_mcp.tools.loras import LoraPlan, Loras
from multimodal_mcp.tools.prompt_weights import unread_weights
from multimodal_mcp.tools.verification import Verify, VerifyLabels

ControlType = Literal["canny", "depth", "pose", "scribble", "segmentation", "lineart", "softedge", "normal"]
Threshold = Annotated[int, Field(ge=0, le=255)]
ControlScale = Annotated[float, Field(ge=0.0, le=2.0, description="How strongly the map steers.")]
OptionalImage = Annotated[str | None, Field(min_length=1, max_length=48_000_000)]
ResizeModeArg = Annotated[
    ResizeMode,
    Field(description="Fitting pictures of another aspect ratio: cut the overhang, fill bands, or stretch."),
]
CONTROL_TYPES_HELP = "canny, depth: made from a photo; others: a prepared map."


class ControlSpec(BaseModel):
    """One ControlNet condition."""

    model_config = ConfigDict(extra="forbid")

    image: ImageArg
    type: ControlType = "canny"  # described at control_type and conditioning_scale
    scale: Annotated[float, Field(ge=0.0, le=2.0)] = 0.8
    preprocess: bool = True  # described at preprocess


class ControlledGenerateParams(Params):
    prompt: Prompt
    control_image: Annotated[
        OptionalImage,
        Field(
            description="ControlNet: the image whose structure to keep.",
        ),
    ] = None
    control_type: Annotated[ControlType, Field(description=CONTROL_TYPES_HELP)] = "canny"
    preprocess: Annotated[bool, Field(description="false: a prepared map.")] = True
    low_threshold: Annotated[Threshold, Field(description="Canny low threshold.")] = 100
    high_threshold: Annotated[Threshold, Field(description="Canny high threshold.")] = 200
    conditioning_scale: ControlScale = 0.8
    controls: Annotated[
        list[ControlSpec] | None,
        Field(
            min_length=1,
            max_length=3,
            description="Several ControlNet maps at once, instead of control_image.",
        ),
    ] = None
    control_start: Annotated[
        float, Field(ge=0.0, lt=1.0, description="Share of steps before control starts.")
    ] = 0.0
    control_end: Annotated[float, Field(gt=0.0, le=1.0, description="Share of steps when control stops.")] = (
        1.0
    )
    negative_prompt: NegativePrompt = None
    model: ModelArg = None
    controlnet: Annotated[
        str | None,
        Field(
            max_length=64,
            description="Omit for the model's ControlNet for control_type.",
        ),
    ] = None
    width: Side = None
    height: Side = None
    steps: Steps = None
    guidance_scale: Guidance = None
    scheduler: Scheduler = None
    seed: Seed = None
    num_images: NumImages = 1
    enhance_prompt: EnhancePrompt = False
    init_image: Annotated[
        OptionalImage,
        Field(
            description=(
                "img2img/inpainting: the starting picture; its aspect ratio is kept unless width/height "
                "are given."
            ),
        ),
    ] = None
    strength: Annotated[
        float,
        Field(
            gt=0.0,
            le=1.0,
            description="How much of init_image to change (1.0 = repaint).",
        ),
    ] = 0.75
    mask_image: Annotated[
        OptionalImage,
        Field(
            description=(
                "Inpainting: white (or with alpha: painted or erased areas) = repaint; the rest is kept "
                "exactly."
            ),
        ),
    ] = None

    reference_image: Annotated[
        OptionalImage,
        Field(
            description="IP-Adapter: a picture whose style or subject to carry over.",
        ),
    ] = None
    reference_scale: Annotated[float, Field(ge=0.0, le=2.0, description="Weight of reference_image.")] = 0.6
    resize_mode: ResizeModeArg = DEFAULT_RESIZE_MODE
    verify: Verify = None
    verify_labels: VerifyLabels = None
    loras: Loras = None

    @model_validator(mode="after")
    def _consistent(self) -> ControlledGenerateParams:
        if (
            self.control_image is None
            and self.controls is None
            and self.init_image is None
            and self.reference_image is None
        ):
            raise ValueError(
                "pass control_image (ControlNet), init_image (img2img, inpainting), reference_image "
                "(IP-Adapter), or a combination"
            )
        if self.control_image is not None and self.controls is not None:
            raise ValueError("pass either control_image or controls, not both")
        if self.controls is not None and self.controlnet is not None:
            raise ValueError(
                "controlnet names the ControlNet for control_image; with controls it is chosen per type"
            )
        if self.mask_image is not None and self.init_image is None:
            raise ValueError("mask_image needs init_image: the mask says which part of init_image to repaint")
        if self.control_start >= self.control_end:
            raise ValueError(
                f"control_start ({self.control_start}) must be less than control_end ({self.control_end})"
            )
        if self.low_threshold > self.high_threshold:
            raise ValueError(
                f"low_threshold ({self.low_threshold}) must not be greater than "
                f"high_threshold ({self.high_threshold})"
            )
        return self

    def control_specs(self) -> list[ControlSpec]:
        if self.controls is not None:
            return list(self.controls)
        if self.control_image is not None:
            return [
                ControlSpec(
                    image=self.control_image,
                    type=self.control_type,
                    scale=self.conditioning_scale,
                    preprocess=self.preprocess,
                )
            ]
        return []


class ControlUsed(BaseModel):
    type: str
    controlnet: str
    scale: float
    control_image: ImageRef = Field(description="The control map the model was steered by.")
    input_image: ImageRef = Field(description="The image the map was made from (the map itself if prepared).")


class ControlledGenerateResult(GenerationResult):
    mode: str = Field(
        description="What steered the images: control, img2img or inpaint, and reference, joined with '+'."
    )
    controls: list[ControlUsed] = Field(description="Every ControlNet condition used, in order.")
    control_image: ImageRef | None = Field(description="The first control map (e.g. the canny edges).")
    input_image: ImageRef | None = Field(description="The first control's input image as stored.")
    control_type: str | None
    controlnet: str | None
    conditioning_scale: float | None
    init_image: ImageRef | None = Field(description="The init_image argument as stored.")
    mask_image: ImageRef | None = Field(description="The mask_image argument as stored.")
    strength: float | None
    reference_image: ImageRef | None = Field(description="The reference_image argument as stored.")
    reference_scale: float | None
    ip_adapter: str | None
    resize_mode: str | None = Field(
        default=None, description="How inputs of another size were fitted; null when none needed fitting."
    )

    def summary(self) -> str:
        text = self._generation_text()
        for used in self.controls:
            text += (
                f" Steered by {used.type} map {used.control_image.uri} "
                f"(ControlNet {used.controlnet}, scale {used.scale})."
            )
        if self.init_image is not None:
            what = "Inpainted" if self.mask_image is not None else "Started from"
            text += f" {what} {self.init_image.uri} (strength {self.strength})."
        if self.reference_image is not None:
            text += (
                f" Reference {self.reference_image.uri} via {self.ip_adapter} (scale {self.reference_scale})."
            )
        return text + self._adjustments_text() + self._verification_text()

    def preview_ids(self) -> list[str]:
        return [*super().preview_ids(), *(used.control_image.id for used in self.controls)]


@dataclass(frozen=True)
class _PreparedControl:
    spec: ControlSpec
    controlnet: str
    source: ResolvedImage
    image: Image.Image
    record: ImageRecord


def _output_size(
    width: int | None,
    height: int | None,
    picture: tuple[int, int],
    *,
    area: int | None,
    multiple: int,
    max_side: int | None,
    room: int,
) -> tuple[int, int, str | None]:
    """The output size for a picture (init_image, or the first control map): the given sides, the
    other one from the picture's aspect ratio; with neither given, the picture's own size (``area``
    None) or about ``area`` pixels with neither side under 64 px (control maps), made smaller when
    needed to fit ``max_side`` and ``room`` pixels. Sides in multiples of ``multiple``.

    Returns (width, height, the limit that made it smaller or None).
    """
    iw, ih = picture

    def step(value: float) -> int:
        return max(multiple, int(value / multiple + 0.5) * multiple)

    if width and height:
        return width, height, None
    if width:
        return width, step(width * ih / iw), None
    if height:
        return step(height * iw / ih), height, None
    w, h = float(iw), float(ih)
    if area is not None:
        factor = (area / (iw * ih)) ** 0.5
        w, h = iw * factor, ih * factor
        if min(w, h) < 64:
            w, h = w * 64 / min(w, h), h * 64 / min(w, h)
    (fw, fh), why = fit_size((round(w), round(h)), multiple, max_side=max_side, max_pixels=room)
    if why == "max_pixels" and min(fw, fh) < MIN_SIDE <= min(w, h):
        # Too small to be worth making: keep the size, and let the budget's error name fewer steps.
        (fw, fh), why = fit_size((round(w), round(h)), multiple, max_side=max_side)
    return fw, fh, why


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes()


def _mask_from(image: Image.Image) -> MaskReading:
    """The binary L mask (255 = repaint) read from a mask image, at the image's size (conventions:
    see :func:`~multimodal_mcp.imaging.normalize.read_mask`)."""
    try:
        return read_mask(image)
    except MaskError as exc:
        raise InvalidArgument(str(exc)) from None


def _unused(params: ControlledGenerateParams, specs: list[ControlSpec]) -> list[Adjustment]:
    """The arguments the caller gave that this call's modes do not use."""
    canny = any(c.type == "canny" and c.preprocess for c in specs)
    with_control = "it applies with control_image or controls"
    rules = {
        "strength": (params.init_image is None, "it applies with init_image"),
        "reference_scale": (params.reference_image is None, "it applies with reference_image"),
        "conditioning_scale": (
            params.controls is not None or not specs,
            "it applies to control_image (controls take a scale each)",
        ),
        "control_type": (
            params.controls is not None or not specs,
            "it applies to control_image (controls take a type each)",
        ),
        "controlnet": (params.control_image is None, "it applies to control_image"),
        "preprocess": (
            params.controls is not None or not specs,
            "it applies to control_image (controls take it each)",
        ),
        "control_start": (not specs, with_control),
        "control_end": (not specs, with_control),
        "low_threshold": (not canny, "it applies to canny control maps only"),
        "high_threshold": (not canny, "it applies to canny control maps only"),
    }
    return [
        Adjustment(argument=name, message=f"{name}={getattr(params, name)!r} was not used: {why}.")
        for name, (unused, why) in rules.items()
        if unused and name in params.model_fields_set
    ]


def _note(adjustments: list[Adjustment], argument: str, fit: Fit | None, fill: str, more: str = "") -> bool:
    """Append what ``fit`` did to ``argument``, if anything; True if it changed the picture."""
    text = fit.describe(argument, fill) if fit is not None else None
    if text is not None:
        adjustments.append(Adjustment(argument=argument, message=text + more))
    return text is not None


@dataclass(frozen=True)
class _Shaped:
    init: Image.Image | None
    mask: Image.Image | None
    reference: Image.Image | None
    fitted: bool


def _shape_edits(
    params: ControlledGenerateParams,
    init: ResolvedImage | None,
    reading: MaskReading | None,
    reference: ResolvedImage | None,
    ip_adapter: str | None,
    target: tuple[int, int] | None,
    adjustments: list[Adjustment],
) -> _Shaped:
    """init_image, mask_image and reference_image fitted by ``params.resize_mode``: the mask to
    init_image's size, then both to ``target`` (the output; None when the model picks it) with one
    geometry; a reference for an IP-Adapter to the square its image encoder takes. What was done
    is appended to ``adjustments``."""
    mode, fitted = params.resize_mode, False
    init_picture = mask = ref = None
    if init is not None:
        init_picture = picture(init.image)
        if reading is not None:
            mask = reading.mask
            if reading.convention != "white_repaints":
                adjustments.append(Adjustment(argument="mask_image", message=reading.describe() + "."))
            if mask.size != init_picture.size:
                fit = plan_fit(mask.size, init_picture.size, mode)
                mask = shape_mask(mask, fit)
                fitted |= _note(adjustments, "mask_image", fit, "white", " It now matches init_image.")
        if target is not None:
            fit = plan_fit(init_picture.size, target, mode)
            init_picture = shape(init_picture, fit)
            mask = shape_mask(mask, fit) if mask is not None else None
            bands = " (its bands white: repainted)" if any(fit.filled) else ""
            also = f" mask_image was fitted the same way{bands}." if mask is not None else ""
            fitted |= _note(adjustments, "init_image", fit, "its edge pixels stretched outward", also)
    if reference is not None:
        ref = picture(reference.image)
        if ip_adapter is not None and ref.width != ref.height:
            side = max(ref.size) if mode == "resize_and_fill" else min(ref.size)
            fit = plan_fit(ref.size, (side, side), mode)
            ref = shape(ref, fit)
            more = " The IP-Adapter's image encoder takes a square picture."
            fitted |= _note(adjustments, "reference_image", fit, "its edge pixels stretched outward", more)
    return _Shaped(init_picture, mask, ref, fitted)


async def controlled_generate(
    params: ControlledGenerateParams, services: Services, progress: Progress | None = None
) -> ControlledGenerateResult:
    """Generate images steered by pictures, any of: ControlNet (control_image and control_type,
    or controls), img2img (init_image), inpainting (init_image and mask_image; the rest is kept
    exactly) and IP-Adapter (reference_image). Otherwise as generate_image; list_models says which
    model takes what; adjustments say what was fitted, cut or not used.
    """
    # 1. Check inputs and pick the models
    hub = services.hub
    name = hub.pick(params.model, "controlled", "text_to_image")
    generation.check_arguments(services, name, params)
    caps = hub.capabilities(name)
    spec = hub.spec(name)
    specs = params.control_specs()
    limits = services.config.server.limits
    multiple = caps.sizes.multiple_of if caps.sizes is not None else None
    steps = (params.steps or spec.defaults.steps or 30) if caps.steps else 1
    if caps.steps and multiple and ((params.width and params.height) or not (params.init_image or specs)):
        # The output size is known before any input is decoded: check the per-call budget now.
        generation.check_budget(
            limits,
            params.width or spec.defaults.width or 512,
            params.height or spec.defaults.height or 512,
            steps,
            params.num_images,
            multiple,
        )
    controlnets = [
        hub.controlnet_for(name, c.type, params.controlnet if params.controls is None else None)
        for c in specs
    ]
    # What makes each map from a photo (canny, depth); None: the picture is the map, used as given.
    preprocessors = [hub.preprocessor(c.type) if c.preprocess else None for c in specs]
    ip_adapter = hub.ip_adapter_for(name) if params.reference_image is not None else None
    sources = [
        await resolve_image(
            services, c.image, "control_image" if params.controls is None else f"controls[{i}].image"
        )
        for i, c in enumerate(specs)
    ]
    reference = (
        await resolve_image(services, params.reference_image, "reference_image")
        if params.reference_image
        else None
    )
    init = await resolve_image(services, params.init_image, "init_image") if params.init_image else None
    mask_source = (
        await resolve_image(services, params.mask_image, "mask_image") if params.mask_image else None
    )
    adjustments = _unused(params, specs)
    read = [("init_image", init), ("mask_image", mask_source), ("reference_image", reference)]
    read += [
        ("control_image" if params.controls is None else f"controls[{i}].image", source)
        for i, source in enumerate(sources)
    ]
    adjustments += [  # what reading an input changed: bit depth, colour profile
        Adjustment(argument=name, message=f"{name}: {note}.")
        for name, resolved in read
        if resolved is not None
        for note in resolved.notes
    ]
    width, height = params.width, params.height
    sized_by = init or (sources[0] if sources else None)
    if sized_by is not None and multiple:
        # Free-size models: the size follows the picture's aspect ratio, within the limits.
        default_area = (spec.defaults.width or 512) * (spec.defaults.height or 512)
        n = params.num_images
        room = min(limits.max_pixels_per_call // n, limits.max_pixel_steps_per_call // (steps * n))
        max_side = caps.sizes.max_side if caps.sizes else None
        width, height, why = _output_size(
            width,
            height,
            sized_by.image.size,
            area=None if init else default_area,
            multiple=multiple,
            max_side=max_side,
            room=room,
        )
        if why is not None:
            what = "init_image" if init else "the control image"
            limit = (
                f"the largest side model {name!r} makes on this server, {max_side} px (max_side)"
                if why == "max_side"
                else f"this server's per-call budget for {params.num_images} image(s) of {steps} steps "
                "(max_pixels_per_call, max_pixel_steps_per_call)"
            )
            adjustments.append(
                Adjustment(
                    argument="width",
                    message=f"The output is {width}x{height}, smaller than {what} "
                    f"({sized_by.image.width}x{sized_by.image.height}), to fit {limit}.",
                )
            )
    edit = init is not None or reference is not None
    planned = generation.plan(services, name, params, width=width, height=height, edit=edit)
    loras = LoraPlan.of(services, planned, params.loras)
    planned = await generation.confirm_and_rewrite(services, planned, edit=edit, progress=progress)
    planned, lora_notes = loras.apply(planned)
    adjustments += lora_notes
    adjustments += unread_weights(
        services, name, {"prompt": planned.parameters.prompt, "negative_prompt": params.negative_prompt}
    )
    # The mask is read before anything is kept: a picture that is not a mask refuses the call.
    reading = await in_thread(_mask_from, mask_source.image) if mask_source and init else None
    await keep_inputs(services, *sources, reference, init, mask_source)
    target = (planned.parameters.width, planned.parameters.height) if planned.parameters.width else None

    # 2. Fit the pictures to the output by resize_mode (the control maps made by the type's
    #    preprocessor, e.g. canny edges, at the output's scale; prepared maps as given) and store the maps
    mode_ = params.resize_mode
    fits = [plan_fit(source.image.size, target, mode_) if target else None for source in sources]
    maps: list[tuple[Image.Image, dict[str, int]]] = []
    for i, (control, source, fit, preprocessor) in enumerate(
        zip(specs, sources, fits, preprocessors, strict=True)
    ):
        settings = (
            {"low_threshold": params.low_threshold, "high_threshold": params.high_threshold}
            if control.type == "canny"
            else {}
        )
        # A map given as is: transparency is its empty value (black); a picture for a preprocessor: white.
        image = control_map(source.image) if preprocessor is None else picture(source.image)
        if preprocessor is None:
            if fit is not None:
                image = await in_thread(lambda im=image, f=fit: shape(im, f, fill=(0, 0, 0)))
            maps.append((image, {}))
        else:
            scaled = await in_thread(scale, image, fit) if fit is not None else image
            try:
                made = await preprocessor(scaled, settings)
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from exc
            maps.append((await in_thread(place, made, fit, 0) if fit is not None else made, settings))
        argument = "control_image" if params.controls is None else f"controls[{i}].image"
        _note(adjustments, argument, fit, "black")
    shaped = await in_thread(
        lambda: _shape_edits(params, init, reading, reference, ip_adapter, target, adjustments)
    )
    if any(f is not None and f.changed for f in fits) or shaped.fitted:
        resize_mode: str | None = mode_
    else:
        resize_mode = None
        if "resize_mode" in params.model_fields_set:
            adjustments.append(
                Adjustment(
                    argument="resize_mode",
                    message=f"resize_mode={mode_!r} changed nothing: every picture already had the size it "
                    "was used at.",
                )
            )

    def store_maps() -> list[_PreparedControl]:
        return [
            _PreparedControl(
                control,
                controlnet,
                source,
                image,
                # A map used exactly as given is the stored input itself.
                source.record
                if _same_pixels(image, source.image)
                else services.store.put(
                    image,
                    kind="control",
                    parents=[source.record.id],
                    parameters={"control_type": control.type, **settings},
                ),
            )
            for control, controlnet, source, (image, settings) in zip(
                specs, controlnets, sources, maps, strict=True
            )
        ]

    prepared = await in_thread(store_maps)

    # 3. Generate through the model's handle (it holds the ControlNets and adapter by name), verify,
    #    screen and store with the ids of every input
    strength = params.strength if init is not None and caps.strength else None
    reference_scale = params.reference_scale if reference is not None and caps.reference_scale else None
    request = ImageRequest(
        prompt=params.prompt,
        init_image=shaped.init,
        mask_image=shaped.mask,
        strength=strength,
        controls=tuple(ControlCondition(p.controlnet, p.image, p.spec.scale) for p in prepared),
        control_start=params.control_start,
        control_end=params.control_end,
        references=(ReferenceCondition(shaped.reference, ip_adapter, reference_scale),)
        if shaped.reference is not None
        else (),
        loras=loras.conditions,
    )
    mode = "+".join(
        [
            *(["control"] if prepared else []),
            *(["inpaint" if shaped.mask is not None else "img2img"] if init else []),
            *(["reference"] if reference else []),
        ]
    )
    used = [
        ControlUsed(
            type=item.spec.type,
            controlnet=item.controlnet,
            scale=item.spec.scale,
            control_image=ImageRef.of(item.record),
            input_image=ImageRef.of(item.source.record),
        )
        for item in prepared
    ]
    parents = [
        *(r for item in prepared for r in dict.fromkeys([item.source.record.id, item.record.id])),
        *([init.record.id] if init else []),
        *([mask_source.record.id] if mask_source else []),
        *([reference.record.id] if reference else []),
    ]
    extra: dict[str, object] = {"mode": mode, **loras.stored()}
    if used:
        extra |= {
            "controls": [{"type": u.type, "controlnet": u.controlnet, "scale": u.scale} for u in used],
            "control_start": params.control_start,
            "control_end": params.control_end,
            "low_threshold": params.low_threshold,
            "high_threshold": params.high_threshold,
        }
    if strength is not None:
        extra["strength"] = strength
    if ip_adapter is not None:
        extra |= {"ip_adapter": ip_adapter, "reference_scale": reference_scale}
    if resize_mode is not None:
        extra["resize_mode"] = resize_mode
    outcome = await generation.run(
        services,
        planned,
        request,
        parents=parents,
        extra_parameters=extra,
        adjustments=adjustments,
        progress=progress,
    )
    first = used[0] if used else None
    return ControlledGenerateResult(
        **generation.result_fields(planned, outcome),
        mode=mode,
        controls=used,
        control_image=first.control_image if first else None,
        input_image=first.input_image if first else None,
        control_type=first.type if first else None,
        controlnet=first.controlnet if first else None,
        conditioning_scale=first.scale if first else None,
        init_image=ImageRef.of(init.record) if init else None,
        mask_image=ImageRef.of(mask_source.record) if mask_source else None,
        strength=strength,
        reference_image=ImageRef.of(reference.record) if reference else None,
        reference_scale=reference_scale,
        ip_adapter=ip_adapter,
        resize_mode=resize_mode,
    )
