"""controlled_generate: generation steered by pictures: ControlNet maps, img2img, inpainting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from multimodal_mcp.errors import InvalidArgument
from multimodal_mcp.handles import ControlCondition, ImageRequest, ReferenceCondition
from multimodal_mcp.imaging.inputs import ResolvedImage
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
    resolve_image,
)
from multimodal_mcp.tools.generation import (
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
from multimodal_mcp.tools.verification import Verify, VerifyLabels

ControlType = Literal["canny", "depth", "pose", "scribble", "segmentation", "lineart", "softedge", "normal"]
Threshold = Annotated[int, Field(ge=0, le=255)]
ControlScale = Annotated[
    float, Field(ge=0.0, le=2.0, description="How strongly the map steers (0 = not at all).")
]
OptionalImage = Annotated[str | None, Field(min_length=1, max_length=48_000_000)]
CONTROL_TYPES_HELP = "canny: edges from any picture; the others: a prepared map."


class ControlSpec(BaseModel):
    """One ControlNet condition, for several at once."""

    model_config = ConfigDict(extra="forbid")

    image: ImageArg
    type: ControlType = "canny"  # described at control_type and conditioning_scale
    scale: Annotated[float, Field(ge=0.0, le=2.0)] = 0.8


class ControlledGenerateParams(Params):
    prompt: Prompt
    control_image: Annotated[
        OptionalImage,
        Field(
            description="ControlNet: the image whose structure to keep.",
        ),
    ] = None
    control_type: Annotated[ControlType, Field(description=CONTROL_TYPES_HELP)] = "canny"
    low_threshold: Annotated[Threshold, Field(description="Canny low threshold.")] = 100
    high_threshold: Annotated[Threshold, Field(description="Canny high threshold.")] = 200
    conditioning_scale: ControlScale = 0.8
    controls: Annotated[
        list[ControlSpec] | None,
        Field(
            min_length=1,
            max_length=3,
            description="Several ControlNet maps at once, instead of control_image: {image, type, scale}.",
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
            description="A configured ControlNet; omit for the model's one for control_type.",
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
            description=("img2img/inpainting: the picture to start from; the output keeps its size."),
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
            description="Inpainting: a mask the size of init_image; white = repaint.",
        ),
    ] = None

    reference_image: Annotated[
        OptionalImage,
        Field(
            description="IP-Adapter: a picture whose style or subject to carry over.",
        ),
    ] = None
    reference_scale: Annotated[float, Field(ge=0.0, le=2.0, description="Weight of reference_image.")] = 0.6
    verify: Verify = False
    verify_labels: VerifyLabels = None

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
        if self.init_image is not None and (self.width is not None or self.height is not None):
            raise ValueError("with init_image the output keeps its size; leave width and height out")
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
                ControlSpec(image=self.control_image, type=self.control_type, scale=self.conditioning_scale)
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
        return text + self._verification_text()

    def preview_ids(self) -> list[str]:
        return [*super().preview_ids(), *(used.control_image.id for used in self.controls)]


@dataclass(frozen=True)
class _PreparedControl:
    spec: ControlSpec
    controlnet: str
    source: ResolvedImage
    image: Image.Image
    record: ImageRecord


def _size_from_control(
    width: int | None, height: int | None, image_size: tuple[int, int], area: int
) -> tuple[int, int]:
    """Keep the control image's aspect ratio at about the model's default area, in multiples of 8,
    with neither side under 64 px."""
    iw, ih = image_size
    if width and height:
        return width, height
    if width:
        w, h = float(width), width * ih / iw
    elif height:
        w, h = height * iw / ih, float(height)
    else:
        scale = (area / (iw * ih)) ** 0.5
        w, h = iw * scale, ih * scale
    if min(w, h) < 64:
        grow = 64 / min(w, h)
        w, h = w * grow, h * grow
    return max(64, round(w / 8) * 8), max(64, round(h / 8) * 8)


def _mask_from(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A binary L mask (255 = repaint) from a black-and-white image of exactly ``size``."""
    if image.size != size:
        raise InvalidArgument(
            f"mask_image is {image.width}x{image.height} but init_image is {size[0]}x{size[1]}; "
            "make the mask exactly the size of init_image (a resize would shift the region)"
        )
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    if np.abs(rgb - rgb[..., :1]).max() > 8:
        raise InvalidArgument("mask_image must be black and white (white = repaint), not a colour image")
    return Image.fromarray(np.where(rgb[..., 0] >= 128, 255, 0).astype(np.uint8), mode="L")


async def controlled_generate(
    params: ControlledGenerateParams, services: Services, progress: Progress | None = None
) -> ControlledGenerateResult:
    """Generate images steered by pictures, any of: ControlNet (control_image and control_type,
    or controls), img2img (init_image), inpainting (init_image and mask_image; the rest is kept
    exactly) and IP-Adapter (reference_image). Images are given as image://<id>, a data: URI, base64,
    a file path or a URL. Otherwise as generate_image; list_models says which model takes what.
    """
    # 1. Check inputs and pick the models
    hub = services.hub
    name = hub.pick(params.model, "controlled", "text_to_image")
    generation.check_arguments(services, name, params)
    caps = hub.capabilities(name)
    spec = hub.spec(name)
    specs = params.control_specs()
    free_size = caps.sizes is not None and caps.sizes.multiple_of is not None
    known_size = params.init_image is None and (not specs or (params.width and params.height))
    if caps.steps and free_size and known_size:
        # The output size is known before any input is decoded: check the per-call budget now.
        generation.check_budget(
            services.config.server.limits,
            params.width or spec.defaults.width or 512,
            params.height or spec.defaults.height or 512,
            params.steps or spec.defaults.steps or 30,
            params.num_images,
        )
    controlnets = [
        hub.controlnet_for(name, c.type, params.controlnet if params.controls is None else None)
        for c in specs
    ]
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
    mask = _mask_from(mask_source.image, init.image.size) if mask_source and init else None
    width, height = params.width, params.height
    if init is not None and free_size:
        width, height = init.image.size  # edits keep the picture's size
    elif sources and free_size:
        default_area = (spec.defaults.width or 512) * (spec.defaults.height or 512)
        width, height = _size_from_control(params.width, params.height, sources[0].image.size, default_area)
    edit = init is not None or reference is not None
    planned = generation.plan(services, name, params, width=width, height=height, edit=edit)
    planned = await generation.confirm_and_rewrite(services, planned, edit=edit, progress=progress)

    # 2. Make the control maps (by the type's preprocessor, e.g. canny edges; prepared maps as
    #    given) and store them
    maps: list[tuple[Image.Image, dict[str, int]]] = []
    for control, source in zip(specs, sources, strict=True):
        preprocessor = hub.preprocessor(control.type)
        if preprocessor is None:
            maps.append((source.image.convert("RGB"), {}))
            continue
        settings = {"low_threshold": params.low_threshold, "high_threshold": params.high_threshold}
        try:
            maps.append((await preprocessor(source.image, settings), settings))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    def store_maps() -> list[_PreparedControl]:
        return [
            _PreparedControl(
                control,
                controlnet,
                source,
                image,
                services.store.put(
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
        init_image=init.image.convert("RGB") if init else None,
        mask_image=mask,
        strength=strength,
        controls=tuple(ControlCondition(p.controlnet, p.image, p.spec.scale) for p in prepared),
        control_start=params.control_start,
        control_end=params.control_end,
        references=(ReferenceCondition(reference.image.convert("RGB"), ip_adapter, reference_scale),)
        if reference is not None
        else (),
    )
    mode = "+".join(
        [
            *(["control"] if prepared else []),
            *(["inpaint" if mask else "img2img"] if init else []),
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
    extra: dict[str, object] = {"mode": mode}
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
    outcome = await generation.run(
        services, planned, request, parents=parents, extra_parameters=extra, progress=progress
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
    )
