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
from multimodal_mcp.tools.verification import Verify, VerifyLabels

Quality = Annotated[
    Literal["auto", "low", "medium", "high", "standard", "hd"] | None,
    Field(
        description=(
            "Quality level, for models that list quality levels in their capabilities (list_models): e.g. "
            "auto, low, medium or high for GPT Image, standard or hd for DALL-E 3. Others refuse it "
            "(use steps)."
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


class GenerateImageResult(GenerationResult):
    """generate_image's result."""


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
    verify='thorough' also checks each fact of the prompt (objects, counts, colours, positions,
    text) with a vision model, a detector and OCR: 'verification[i].claims' says which failed.
    enhance_prompt=True first has a text model expand a terse prompt into a detailed one (subject,
    style, lighting, composition); the result returns both prompts, and the images are stored with
    both. Pass the returned prompt (without enhance_prompt) and the seed to repeat an image exactly.
    Models differ in what they take: list_models shows each one's capabilities (seed, steps,
    guidance, schedulers, sizes, images per call, quality levels). Hosted models make their own
    sizes (gpt-image-2: 1024x1024, 1536x1024, 1024x1536; dall-e-3: one image per call;
    gemini-2.5-flash-image: 1024x1024, 1344x768, 768x1344 and other aspect ratios) and take no
    seed, steps, guidance or scheduler; an argument a model does not take is an error naming the
    models that do.
    If the server runs a safety filter, images it flags are withheld (not stored, no id) and the
    result's 'withheld' list says how many and why.
    """
    # 1. Check inputs against the model's capabilities and the server's limits
    name = services.hub.pick(params.model, "text_to_image", "text_to_image")
    planned = generation.plan(services, name, params, width=params.width, height=params.height)

    # 2. Confirm paid models with the user before any work; rewrite the prompt if asked
    planned = await generation.confirm_and_rewrite(services, planned, progress=progress)

    # 3. Generate, verify, screen and store
    outcome = await generation.run(services, planned, ImageRequest(prompt=params.prompt), progress=progress)
    return GenerateImageResult(**generation.result_fields(planned, outcome))
