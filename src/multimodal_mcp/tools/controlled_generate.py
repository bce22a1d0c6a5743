"""controlled_generate: ControlNet-guided generation (canny edges computed from an ordinary image)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from multimodal_mcp.backends.base import ControlInput
from multimodal_mcp.config import Config
from multimodal_mcp.errors import InvalidArgument, UnknownModel, UnsupportedOperation
from multimodal_mcp.imaging.analysis import canny_edges
from multimodal_mcp.tools.common import (
    Clock,
    ImageRef,
    ModelArg,
    Params,
    Progress,
    Services,
    draw_seed,
    in_thread,
    pick_model,
    resolve_image,
)
from multimodal_mcp.tools.generate_image import (
    GenerateImageResult,
    Guidance,
    NegativePrompt,
    NumImages,
    Prompt,
    Scheduler,
    Seed,
    Side,
    Steps,
    _denoise,
    generation_request,
    resolve_parameters,
    store_generated,
)

ControlType = Literal["canny"]
Threshold = Annotated[int, Field(ge=0, le=255)]


class ControlledGenerateParams(Params):
    prompt: Prompt
    control_image: Annotated[
        str,
        Field(
            min_length=1,
            max_length=48_000_000,
            description=(
                "The image whose structure to keep: image://<id>, a data: URI, bare base64, or an absolute "
                "file path. For canny, an ordinary photo or drawing; the edge map is computed from it."
            ),
        ),
    ]
    control_type: Annotated[
        ControlType, Field(description="The kind of control. 'canny': edges of the image.")
    ] = "canny"
    low_threshold: Annotated[Threshold, Field(description="Canny lower hysteresis threshold (0-255).")] = 100
    high_threshold: Annotated[Threshold, Field(description="Canny upper hysteresis threshold (0-255).")] = 200
    conditioning_scale: Annotated[
        float,
        Field(ge=0.0, le=2.0, description="How strongly the control map steers the image (0 = ignore it)."),
    ] = 0.8
    negative_prompt: NegativePrompt = None
    model: ModelArg = None
    controlnet: Annotated[
        str | None,
        Field(
            max_length=64,
            description="A configured ControlNet name; omit to use the one for the model and type.",
        ),
    ] = None
    width: Side = None
    height: Side = None
    steps: Steps = None
    guidance_scale: Guidance = None
    scheduler: Scheduler = None
    seed: Seed = None
    num_images: NumImages = 1

    @model_validator(mode="after")
    def _thresholds(self) -> ControlledGenerateParams:
        if self.low_threshold > self.high_threshold:
            raise ValueError(
                f"low_threshold ({self.low_threshold}) must not be greater than "
                f"high_threshold ({self.high_threshold})"
            )
        return self


class ControlledGenerateResult(GenerateImageResult):
    control_image: ImageRef = Field(
        description="The control map the model was steered by (e.g. the canny edges)."
    )
    input_image: ImageRef = Field(description="The control_image argument as stored.")
    control_type: str
    controlnet: str
    conditioning_scale: float

    def summary(self) -> str:
        return (
            f"{super().summary()} Steered by {self.control_type} map {self.control_image.uri} "
            f"(ControlNet {self.controlnet}, scale {self.conditioning_scale})."
        )

    def preview_ids(self) -> list[str]:
        return [*super().preview_ids(), self.control_image.id]


def find_controlnet(config: Config, base: str, control_type: str, requested: str | None) -> str:
    """The ControlNet to use with ``base``; errors name the models that can do ``control_type``."""
    fitting = [
        name
        for name, spec in config.models.items()
        if spec.task == "controlnet" and spec.control_type == control_type and base in spec.base_models
    ]
    if requested is not None:
        spec = config.models.get(requested)
        if spec is None or spec.task != "controlnet":
            raise UnknownModel(
                f"no ControlNet named {requested!r}; ControlNets for {base!r}: {fitting or 'none'}"
            )
        if requested not in fitting:
            raise UnsupportedOperation(
                f"ControlNet {requested!r} ({spec.control_type}, for {list(spec.base_models)}) does not fit "
                f"model {base!r} with control_type {control_type!r}; fitting: {fitting or 'none'}"
            )
        return requested
    if not fitting:
        bases = sorted(
            {
                b
                for spec in config.models.values()
                if spec.control_type == control_type
                for b in spec.base_models
            }
        )
        raise UnsupportedOperation(
            f"model {base!r} has no {control_type} ControlNet configured; models that can: {bases or 'none'}"
        )
    return fitting[0]


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


async def controlled_generate(
    params: ControlledGenerateParams, services: Services, progress: Progress | None = None
) -> ControlledGenerateResult:
    """Generate images that keep the structure of a reference image, with a ControlNet.

    control_type='canny' computes an edge map from control_image with OpenCV (low_threshold,
    high_threshold) and steers a Stable Diffusion model with it; conditioning_scale sets how
    strictly the edges are followed. The edge map is stored and returned (control_image) so you can
    see what steered the result. Everything else works as in generate_image.
    """
    # 1. Check inputs and pick the models
    clock = Clock()
    name, spec = pick_model(services.config, params.model, "controlled", "text_to_image")
    controlnet_name = find_controlnet(services.config, name, params.control_type, params.controlnet)
    source = await resolve_image(services, params.control_image, "control_image")
    default_area = (spec.defaults.width or 512) * (spec.defaults.height or 512)
    width, height = _size_from_control(params.width, params.height, source.image.size, default_area)
    parameters = resolve_parameters(
        spec=spec,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        width=width,
        height=height,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        scheduler=params.scheduler,
        num_images=params.num_images,
        services=services,
        default_scheduler="dpm++",
    )
    seed = params.seed if params.seed is not None else draw_seed()
    seeds = [(seed + i) % 2**32 for i in range(params.num_images)]

    # 2. Compute and store the control map
    def make_control():  # type: ignore[no-untyped-def]
        edges = canny_edges(source.image, params.low_threshold, params.high_threshold)
        record = services.store.put(
            edges,
            kind="control",
            parents=[source.record.id],
            parameters={
                "control_type": params.control_type,
                "low_threshold": params.low_threshold,
                "high_threshold": params.high_threshold,
            },
        )
        return edges, record

    try:
        control_map, control_record = await in_thread(make_control)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from exc

    # 3. Hold the base pipeline and its ControlNet on one device (the base weights are the ones
    #    generate_image uses: loaded once)
    async with (
        clock.use(services, name) as model,
        clock.use(services, controlnet_name, near=model) as controlnet,
    ):
        control = ControlInput(controlnet.model, control_map, params.conditioning_scale)
        request = generation_request(parameters, seeds, (control,))
        model.check(request)

        # 4. Denoise
        async with clock.infer():
            images = await services.pool.run(model, _denoise(request), progress=progress)

    # 5. Store with the ids of every input
    refs = await store_generated(
        services,
        images,
        seeds=seeds,
        model=name,
        parameters=parameters,
        parents=[source.record.id, control_record.id],
        extra_parameters={
            "control_type": params.control_type,
            "controlnet": controlnet_name,
            "conditioning_scale": params.conditioning_scale,
            "low_threshold": params.low_threshold,
            "high_threshold": params.high_threshold,
        },
    )
    return ControlledGenerateResult(
        images=refs,
        seed=seed,
        model=name,
        parameters=parameters,
        timings=clock.timings(),
        control_image=ImageRef.of(control_record),
        input_image=ImageRef.of(source.record),
        control_type=params.control_type,
        controlnet=controlnet_name,
        conditioning_scale=params.conditioning_scale,
    )
