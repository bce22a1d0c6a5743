"""describe_image: a vision-language model answers a prompt about an image."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from multimodal_mcp.errors import InvalidArgument
from multimodal_mcp.handles import Usage
from multimodal_mcp.imaging.normalize import picture
from multimodal_mcp.tools.common import (
    READ_SIDE_VLM,
    Clock,
    DetailArg,
    ImageArg,
    ImageRef,
    ModelArg,
    Params,
    Progress,
    Result,
    Services,
    Timings,
    approve_spending,
    check_limit,
    given_arguments,
    keeping_inputs,
    resolve_image,
)
from multimodal_mcp.tools.json_answer import check_schema_off_loop, parse_answer_off_loop
from multimodal_mcp.tools.verification import Grounding, ground_description, grounding_summary

DEFAULT_PROMPT = "Describe this image in detail."


class DescribeImageParams(Params):
    image: ImageArg
    prompt: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=4000,
            description="A question or instruction about the image; omit for a general description.",
        ),
    ] = None
    model: ModelArg = None
    max_tokens: Annotated[
        int | None,
        Field(
            ge=1,
            le=8192,
            description="Longest answer in tokens; omit for the model's default.",
        ),
    ] = None
    ground: Annotated[
        bool,
        Field(
            description="Check the answer: named things with CLIP, numbers and quoted text with OCR.",
        ),
    ] = False
    detail: DetailArg = None
    response_schema: Annotated[
        dict[str, Any] | None,
        Field(
            max_length=64,
            description=(
                'A JSON Schema the answer must match, e.g. {"type":"object","properties":{"total":'
                '{"type":"number"}}}; the answer comes back in \'data\'.'
            ),
        ),
    ] = None


class DescribeImageResult(Result):
    text: str
    model: str
    prompt: str
    image: ImageRef
    tokens: int = Field(description="Tokens generated.")
    data: Any = Field(
        default=None, description="With response_schema: the answer as JSON, validated against the schema."
    )
    usage: Usage | None = Field(
        default=None, description="Metered (hosted) models: tokens and images the call used."
    )
    timings: Timings
    grounding: Grounding | None = Field(
        default=None, description="With ground=True: the answer's noun phrases scored against the image."
    )

    def summary(self) -> str:
        text = (
            f"{self.model} on {self.image.uri}: {self.text}\n"
            "(Vision-language models can describe things that are not there; verify key claims with "
            "clip_classify.)"
        )
        if self.grounding is not None:
            text += "\n" + grounding_summary(self.grounding)
        return text


async def describe_image(
    params: DescribeImageParams, services: Services, progress: Progress | None = None
) -> DescribeImageResult:
    """Ask a vision-language model about an image: describe it, read text, answer a question.

    response_schema gets the answer as checked JSON. Answers can contain hallucinated details; ground
    checks them.
    """
    # 1. Check inputs
    clock = Clock()
    name = services.hub.pick(params.model, "vlm", "vlm")
    services.hub.check(name, given_arguments(params))
    spec = services.hub.spec(name)
    max_tokens = params.max_tokens or spec.defaults.max_tokens or 256
    check_limit(
        "max_tokens", max_tokens, services.config.server.limits.max_tokens, "ask for a shorter answer"
    )
    limit = services.config.server.limits.max_prompt_chars
    if params.prompt is not None and len(params.prompt) > limit:
        raise InvalidArgument(
            f"the prompt is {len(params.prompt)} characters; this server's limit is {limit} "
            "(max_prompt_chars); ask a shorter question"
        )
    prompt = params.prompt or DEFAULT_PROMPT
    validator = (
        await check_schema_off_loop(params.response_schema) if params.response_schema is not None else None
    )
    read_side = services.hub.image_side(name) or READ_SIDE_VLM
    source = await resolve_image(services, params.image, "image", min_side=read_side)
    image = picture(source.image)
    await approve_spending(services, name, f"one answer about an image (up to {max_tokens} tokens)")

    # 2. Answer, wherever the model runs (structured output or asked for JSON, as it can); the
    # input is stored meanwhile, before the result is returned
    chat = services.hub.vision_chat(name)
    async with keeping_inputs(services, source), clock.infer():
        answer = await chat.answer(
            [image],
            prompt,
            max_tokens=max_tokens,
            detail=params.detail,
            schema=params.response_schema,
            progress=progress,
        )
    clock.loaded(answer.load_seconds)
    text, tokens, usage = answer.text, answer.tokens, answer.usage

    # 3. Structured answers are checked against the schema, whoever wrote them
    data = await parse_answer_off_loop(text, validator, name) if validator is not None else None

    # 4. Ground: score the things the answer names against the image
    grounding = None
    if params.ground:
        async with clock.infer():
            grounding = await ground_description(services, image, text)
    return DescribeImageResult(
        text=text,
        model=name,
        prompt=prompt,
        image=ImageRef.of(source.record),
        tokens=tokens,
        data=data,
        usage=usage,
        timings=clock.timings(),
        grounding=grounding,
    )
