"""generate_image: text to image with any configured text-to-image model, local or hosted."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from multimodal_mcp.handles import ImageRequest
from multimodal_mcp.tools import generation
from multimodal_mcp.tools.common import ModelArg, Params, Progress, Services
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
from multimodal_mcp.tools.loras import LoraPlan, Loras
from multimodal_mcp.tools.prompt_weights import unread_weights
from multimodal_mcp.tools.verification import Verify, VerifyLabels

Quality = Annotated[
    Literal["auto", "low", "medium", "high", "standard", "hd"] | None,
    Field(description="For models that list quality levels (list_models); others use steps."),
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
    verify: Verify = None
    verify_labels: VerifyLabels = None
    enhance_prompt: EnhancePrompt = False
    quality: Quality = None
    loras: Loras = None


class GenerateImageResult(GenerationResult):
    """generate_image's result."""


async def generate_image(
    params: GenerateImageParams, services: Services, progress: Progress | None = None
) -> GenerateImageResult:
    """Generate images from a text prompt with a local or hosted model (list_models).

    Each image gets an id: pass 'image://<id>' to the other tools to check or edit it; keep the seed
    to keep the composition while you revise the prompt. Omitted arguments use the model's defaults.
    An argument the model does not take, or a call over the pixel or pixel-steps budget, is an error
    saying what to change; the result's adjustments say what was cut or not used.
    """
    # 1. Check inputs against the model's capabilities and the server's limits
    name = services.hub.pick(params.model, "text_to_image", "text_to_image")
    planned = generation.plan(services, name, params, width=params.width, height=params.height)
    loras = LoraPlan.of(services, planned, params.loras)

    # 2. Confirm paid models with the user before any work; rewrite the prompt if asked; add the
    #    LoRAs' trigger words
    planned = await generation.confirm_and_rewrite(services, planned, progress=progress)
    planned, adjustments = loras.apply(planned)
    adjustments += unread_weights(
        services, name, {"prompt": planned.parameters.prompt, "negative_prompt": params.negative_prompt}
    )

    # 3. Generate, verify, screen and store
    outcome = await generation.run(
        services,
        planned,
        ImageRequest(prompt=params.prompt, loras=loras.conditions),
        extra_parameters=loras.stored(),
        adjustments=adjustments,
        progress=progress,
    )
    return GenerateImageResult(**generation.result_fields(planned, outcome))
