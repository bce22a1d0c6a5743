"""The contract every backend passes for its task (the habit of diffusers' pipeline tester mixins).

Each tiny local family, each hosted fake and each test plugin (tests/plugins: a local painter and a
hosted echo VLM, registered through entry points) runs the same tests: the handle is of the task's
kind, outputs have the declared shapes and types, seeds repeat images where declared, every argument
the model does not declare is refused naming the models that take it (and never a provider),
cancellation stops a local generation between steps, and failures are curated errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import numpy as np
import pytest
from PIL import Image

from multimodal_mcp import registry
from multimodal_mcp.capabilities import RULES, Capabilities
from multimodal_mcp.errors import MultimodalError, UnsupportedOperation
from multimodal_mcp.handles import ImageGenerator, ImageRequest, ImageTextEmbedder, TextChat, VisionChat
from multimodal_mcp.tools.common import Services

from helpers import photo

# Marked here, not only by the root conftest's hook: anyio's plugin re-creates async tests that do not
# request its backend fixture at collection, which drops their parametrization.
pytestmark = pytest.mark.anyio

GENERATORS = [
    "tiny-sd15",
    "tiny-sdxl",
    "tiny-flux",
    "tiny-sd3",
    "gpt-image-2",
    "dall-e-3",
    "gemini-2.5-flash-image",
    "comfy-sdxl",
    "painter",
]
VISION_CHATS = [
    "tiny-vlm",
    "tiny-qwen2-vl",
    "gpt-4o",
    "gemini-2.5-flash",
    "vertex-flash",
    "claude-sonnet-5-5",
    "compatible-vlm",
    "echo-vlm",
]
TEXT_CHATS = ["tiny-text", "gpt-4o-mini", "gemini-2.5-flash-lite", "claude-haiku-5-5"]
EMBEDDERS = ["tiny-clip", "tiny-siglip"]

# A value for each argument that only some models take, as a tool would pass it.
SAMPLE_VALUES: dict[str, object] = {
    "negative_prompt": "blurry",
    "seed": 7,
    "steps": 3,
    "guidance_scale": 5.0,
    "scheduler": "euler",
    "quality": "high",
    "num_images": 12,
    "width": 64,
    "height": 64,
    "init_image": "image://x",
    "mask_image": "image://x",
    "strength": 0.5,
    "control_image": "image://x",
    "controls": [{"image": "image://x"}],
    "controlnet": "x",
    "control_type": "depth",
    "conditioning_scale": 0.5,
    "control_start": 0.1,
    "control_end": 0.9,
    "low_threshold": 10,
    "high_threshold": 20,
    "reference_image": "image://x",
    "reference_scale": 0.5,
    "loras": [{"name": "tiny-lora-ink", "scale": 0.8}],
    "detail": "low",
    "response_schema": {"type": "object"},
}
GENERATION_ARGUMENTS = [a for a in RULES if a not in ("detail", "response_schema")]
CHAT_ARGUMENTS = ["detail", "response_schema"]


@asynccontextmanager
async def running(services: Services) -> AsyncIterator[None]:
    """The pool's background work for the block; the hosted clients closed after it, on its loop."""
    try:
        async with services.pool.running():
            yield
    finally:
        await services.hub.aclose()


def _size(caps: Capabilities) -> tuple[int | None, int | None]:
    assert caps.sizes is not None
    return (None, None) if caps.sizes.fixed else (64, 64)


def _request(services: Services, name: str, **overrides: object) -> ImageRequest:
    caps = services.hub.capabilities(name)
    width, height = _size(caps)
    fields: dict[str, object] = {
        "prompt": "a lighthouse at dusk",
        "num_images": 2 if caps.max_images >= 2 else 1,
        "width": width,
        "height": height,
    }
    if caps.steps:
        fields["steps"] = 2
    if caps.guidance_scale:
        fields["guidance_scale"] = 5.0
    if caps.schedulers:
        fields["scheduler"] = caps.schedulers[0]
    if caps.seed:
        fields["seeds"] = (11, 12) if fields["num_images"] == 2 else (11,)
    fields.update(overrides)
    return ImageRequest(**fields)  # type: ignore[arg-type]


def _png_bytes(image: Image.Image) -> bytes:
    return np.asarray(image.convert("RGB")).tobytes()


# --- every model: the registry, its kind of handle, its capabilities ------------------------------


@pytest.mark.parametrize("model_name", GENERATORS + VISION_CHATS + TEXT_CHATS + EMBEDDERS)
def test_every_model_has_a_handle_of_its_tasks_kind_and_capabilities_as_data(
    contract_services: Services, model_name: str
) -> None:
    hub = contract_services.hub
    kind = {
        "text_to_image": ImageGenerator,
        "vlm": VisionChat,
        "text": TextChat,
        "clip": ImageTextEmbedder,
    }[hub.spec(model_name).task]
    handle = hub.handle(model_name)
    assert isinstance(handle, kind)
    assert handle.name == model_name and isinstance(handle.capabilities, Capabilities)
    limits = contract_services.config.server.limits
    assert hub.capabilities(model_name) == handle.capabilities.within(limits.max_images, limits.max_side)
    assert hub.spec(model_name).backend in registry.backends()


@pytest.mark.parametrize("model_name", GENERATORS + VISION_CHATS + TEXT_CHATS)
def test_an_argument_the_model_does_not_declare_is_refused_naming_the_models_that_take_it(
    contract_services: Services, model_name: str
) -> None:
    hub = contract_services.hub
    caps = hub.capabilities(model_name)
    task = hub.spec(model_name).task
    arguments = GENERATION_ARGUMENTS if task == "text_to_image" else CHAT_ARGUMENTS if task == "vlm" else []
    for argument in arguments:
        value = SAMPLE_VALUES[argument]
        if RULES[argument].takes(caps, value):
            continue
        with pytest.raises(UnsupportedOperation) as info:
            hub.check(model_name, {argument: value})
        message = str(info.value)
        assert f"model {model_name!r} does not take" in message and argument in message
        takers = [
            other
            for other in hub.models_for(task)
            if other != model_name and RULES[argument].takes(hub.capabilities(other), value)
        ]
        if takers:
            assert f"models that do: {', '.join(takers)}" in message
        else:
            assert "no configured model does" in message
        # About the model and the argument: no other backend's model_name (model names aside).
        prose = message
        for model in sorted(hub.config.models, key=len, reverse=True):
            prose = prose.replace(model, "")
        others = {
            b.title.split(" ")[0] for n, b in registry.backends().items() if n != hub.spec(model_name).backend
        }
        assert not [word for word in others if word.lower() in prose.lower()], prose
    # What it declares, it is not refused.
    declared = {a: SAMPLE_VALUES[a] for a in arguments if RULES[a].takes(caps, SAMPLE_VALUES[a])}
    hub.check(model_name, declared)


# --- image generators -----------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", GENERATORS)
async def test_a_generator_makes_the_images_asked_for_as_rgb_of_a_declared_size(
    contract_services: Services, model_name: str
) -> None:
    hub = contract_services.hub
    caps = hub.capabilities(model_name)
    request = _request(contract_services, model_name)
    async with running(contract_services):
        made = await hub.image_generator(model_name).generate(request)
    assert len(made.images) == request.num_images
    for image in made.images:
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert caps.sizes is not None
        if caps.sizes.fixed:
            assert image.size in caps.sizes.fixed
        else:
            assert image.size == (request.width, request.height)
    assert made.load_seconds >= 0


@pytest.mark.parametrize(
    "model_name", [n for n in GENERATORS if n.startswith("tiny-") or n in ("painter", "comfy-sdxl")]
)
async def test_a_seeded_generator_repeats_an_image_from_its_seed(
    contract_services: Services, model_name: str
) -> None:
    hub = contract_services.hub
    assert hub.capabilities(model_name).seed
    generator = hub.image_generator(model_name)
    async with running(contract_services):
        first = await generator.generate(_request(contract_services, model_name, num_images=1, seeds=(5,)))
        again = await generator.generate(_request(contract_services, model_name, num_images=1, seeds=(5,)))
        other = await generator.generate(_request(contract_services, model_name, num_images=1, seeds=(6,)))
    assert _png_bytes(first.images[0]) == _png_bytes(again.images[0])
    assert _png_bytes(first.images[0]) != _png_bytes(other.images[0])


@pytest.mark.parametrize("model_name", ["tiny-sd15", "painter"])
async def test_cancelling_a_local_generation_stops_it_and_frees_its_lane(
    contract_services: Services, model_name: str
) -> None:
    generator = contract_services.hub.image_generator(model_name)
    steps_seen: list[float] = []
    started = anyio.Event()

    async def progress(done: float, total: float | None, message: str | None) -> None:
        steps_seen.append(done)
        if done >= 1:
            started.set()

    slow = _request(contract_services, model_name, num_images=1, seeds=(1,), steps=200)
    async with running(contract_services):
        with anyio.move_on_after(30) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: generator.generate(slow, progress=progress))
                with anyio.fail_after(20):
                    await started.wait()
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught, "the generation did not stop when cancelled"
        assert max(steps_seen) < 200
        # The lane is free: the next call runs at once.
        quick = _request(contract_services, model_name, num_images=1, seeds=(2,), steps=1)
        with anyio.fail_after(15):
            made = await generator.generate(quick)
    assert len(made.images) == 1


@pytest.mark.parametrize(
    ("model_name", "request_overrides", "fragment"),
    [
        ("tiny-sd15", {"width": 60, "height": 64}, "not a multiple of 8"),
        ("painter", {"prompt": "something forbidden"}, "does not paint 'forbidden'"),
        ("gpt-image-2", {}, "OpenAI failed (HTTP 500)"),
        ("gemini-2.5-flash-image", {}, "Gemini rejected the request (HTTP 400)"),
        ("comfy-sdxl", {}, "refused the workflow (HTTP 400): Prompt outputs failed validation"),
    ],
)
async def test_a_generator_failure_is_a_curated_error(
    contract_services: Services,
    model_name: str,
    request_overrides: dict[str, object],
    fragment: str,
    fakes,
    comfy_fake,
) -> None:  # type: ignore[no-untyped-def]
    openai_fake, gemini_fake = fakes
    from fake_providers import Scripted, gemini_error

    comfy_fake.reject = {"error": {"message": "Prompt outputs failed validation"}, "node_errors": {}}

    openai_fake.queue(*[Scripted(status=500, body={"error": {"message": "boom"}})] * 3)
    gemini_fake.queue(gemini_error(400, "bad prompt", "INVALID_ARGUMENT"))
    async with running(contract_services):
        with pytest.raises(MultimodalError) as info:
            await contract_services.hub.image_generator(model_name).generate(
                _request(contract_services, model_name, **request_overrides)
            )
    assert fragment in str(info.value) and "Traceback" not in str(info.value)


# --- vision and text chat -------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", VISION_CHATS)
async def test_a_vision_chat_answers_about_as_many_images_as_it_declares(
    contract_services: Services, model_name: str
) -> None:
    hub = contract_services.hub
    caps = hub.capabilities(model_name)
    assert caps.images_per_request >= 1
    images = [photo("coffee", 32), photo("chelsea", 32)][: min(2, caps.images_per_request)]
    async with running(contract_services):
        answer = await hub.vision_chat(model_name).answer(images, "What is shown?", max_tokens=8)
    assert isinstance(answer.text, str) and answer.tokens >= 0


@pytest.mark.parametrize("model_name", TEXT_CHATS)
async def test_a_text_chat_completes_a_turn(contract_services: Services, model_name: str) -> None:
    async with running(contract_services):
        answer = await contract_services.hub.text_chat(model_name).complete(
            "You rewrite prompts.", "a fox", max_tokens=8
        )
    assert isinstance(answer.text, str) and answer.tokens >= 0


# --- embedders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", EMBEDDERS)
async def test_an_embedder_gives_unit_vectors_and_probabilities(
    contract_services: Services, model_name: str
) -> None:
    embedder = contract_services.hub.embedder(model_name)
    async with running(contract_services):
        (a, b) = await embedder.embed_images([photo("coffee", 32), photo("chelsea", 32)])
        scores = await embedder.classify(photo("coffee", 32), ["a cup", "a cat"])
        rows, scale = await embedder.similarities([photo("coffee", 32)], ["a cup", "a cat", "a dog"])
    assert a.shape == b.shape and abs(float(np.linalg.norm(a)) - 1) < 1e-4
    assert len(scores) == 2 and all(0 <= score <= 1 for score in scores)
    if not embedder.capabilities.sigmoid_scores:  # a softmax over the labels; sigmoid scores stand alone
        assert abs(sum(scores) - 1) < 1e-5
    assert len(rows) == 1 and len(rows[0]) == 3 and scale > 0


# --- the other handles the tools use ----------------------------------------------------------------


async def test_control_maps_come_from_the_types_preprocessor_and_prepared_types_have_none(
    contract_services: Services,
) -> None:
    from multimodal_mcp.handles import ControlPreprocessor
    from multimodal_mcp.imaging.analysis import canny_edges

    hub = contract_services.hub
    canny = hub.preprocessor("canny")
    assert isinstance(canny, ControlPreprocessor) and canny.control_type == "canny"
    picture = photo("astronaut", 64)
    edges = await canny(picture, {"low_threshold": 50, "high_threshold": 150})
    assert edges.mode == "RGB" and edges.tobytes() == canny_edges(picture, 50, 150).tobytes()
    # Depth: the [defaults] depth model, run in the pool; a map the size of the picture.
    depth = hub.preprocessor("depth")
    assert isinstance(depth, ControlPreprocessor) and depth.control_type == "depth"
    async with running(contract_services):
        made = await depth(photo("astronaut", 48).resize((80, 48)), {})
    assert made.mode == "RGB" and made.size == (80, 48)
    assert contract_services.pool.is_loaded(hub.config.defaults["depth"])
    assert hub.preprocessor("scribble") is None  # a drawing is its own map, used as given
    with pytest.raises(UnsupportedOperation, match=r"OpenPose.*controlnet_aux.*preprocess=false"):
        hub.preprocessor("pose")


async def test_the_safety_gate_is_a_safety_checker_that_screens_off_the_event_loop() -> None:
    from multimodal_mcp.backends.safety import SafetyGate
    from multimodal_mcp.handles import SafetyChecker, Verdict
    from multimodal_mcp.server_settings import SafetySettings

    class Flags:
        name = "flags-red"

        def check(self, images: list[Image.Image]) -> list[Verdict]:
            return [Verdict(flagged=image.getpixel((0, 0))[0] > 200, category="red") for image in images]

    gate = SafetyGate(SafetySettings(filter="on"), loaded=Flags())
    assert isinstance(gate, SafetyChecker) and gate.enabled
    verdicts = await gate.screen([Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4))])
    assert [v.flagged for v in verdicts] == [True, False] and gate.checked == 2
