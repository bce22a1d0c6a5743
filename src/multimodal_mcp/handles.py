"""Model handles: the interfaces the tools use to reach a model, whatever runs it.

A tool asks the hub (:mod:`multimodal_mcp.hub`) for the handle of a model *name* and calls it; it
never knows whether the model runs in this process on the pool's device lanes, on a provider's API, or
elsewhere. Requests and answers are plain data (PIL images, numbers, strings), so an implementation
may run the work in another process or machine. No torch here.

Every handle has a ``name`` (the configured model name) and ``capabilities`` (what it honours: see
:mod:`multimodal_mcp.capabilities`). The hub checks a call's arguments against the capabilities
before it reaches a handle, so a handle may assume what it gets is within them.

Errors: handles raise :class:`~multimodal_mcp.errors.MultimodalError` subclasses with messages for
the caller (``InvalidArgument`` for a value only the loaded model can refuse, ``Busy`` when at
capacity, ``BackendError``/``ProviderError`` when the model failed); any other exception is treated
as a bug and reported without internals.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

from PIL import Image
from pydantic import BaseModel, Field

from multimodal_mcp.capabilities import Capabilities

if TYPE_CHECKING:  # numpy is not imported at start-up (issue 20: a quick start)
    import numpy as np
    import numpy.typing as npt

Progress = Callable[[float, float | None, str | None], Coroutine[Any, Any, None]]
"""Reports progress to the caller: (progress, total or None, message or None)."""

Detail = Literal["low", "high", "auto"]

Embedding: TypeAlias = "npt.NDArray[np.float32]"
"""An L2-normalised embedding: a float32 vector of shape (dim,)."""


class Usage(BaseModel):
    """What a call to a metered model consumed, as its provider reported it."""

    prompt_tokens: int | None = Field(description="Input tokens (text and images); null if not reported.")
    completion_tokens: int | None = Field(description="Output tokens; null if not reported.")
    images: int = Field(description="Images generated.")


class Adjustment(BaseModel):
    """Something a call was given that was changed, cut or not used, said in a sentence."""

    argument: str = Field(description="The argument it concerns, e.g. init_image, prompt, steps.")
    message: str = Field(description="What was done and why.")
    dropped: str | None = Field(
        default=None, description="Prompts: the end of the text the text encoder did not read."
    )


# --- image generation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlCondition:
    """One ControlNet condition: the configured ControlNet's name, its map, and how strongly it steers.

    ``image`` is the control map (RGB), normally at the output size: controlled_generate fits it
    by the caller's resize_mode. A handle stretches a map of another size to the output size.
    """

    controlnet: str
    image: Image.Image
    scale: float


@dataclass(frozen=True)
class ReferenceCondition:
    """A reference picture whose style or subject to carry over.

    ``adapter`` names the configured IP-Adapter for models that need one (None for models that take
    reference pictures natively); ``scale`` is how much it counts (None: the model's own weighting).
    """

    image: Image.Image
    adapter: str | None = None
    scale: float | None = None


@dataclass(frozen=True)
class LoraCondition:
    """A configured LoRA (by name) to apply for one call, and its scale (adapter weight: 0 is off,
    1 the strength it was trained at)."""

    name: str
    scale: float


@dataclass(frozen=True)
class ImageRequest:
    """One generation call. Fields a model's capabilities do not include are None or empty.

    Sizes are pixels. ``seeds`` holds one seed per image (image i uses ``seeds[i]``) for models
    that are reproducible from a seed, else None, and then ``num_images`` says how many to make.
    ``width``/``height`` None means the model's own choice. ``mask_image`` is an L image the size of
    ``init_image``, 255 where to repaint.
    """

    prompt: str
    num_images: int = 1
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    seeds: tuple[int, ...] | None = None
    quality: str | None = None
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None
    strength: float | None = None
    controls: tuple[ControlCondition, ...] = ()
    control_start: float = 0.0
    control_end: float = 1.0
    references: tuple[ReferenceCondition, ...] = ()
    loras: tuple[LoraCondition, ...] = ()

    @property
    def mode(self) -> str:
        """text2img, or the ways it is steered joined with '+': control, img2img or inpaint."""
        parts = ["control"] if self.controls else []
        if self.init_image is not None:
            parts.append("inpaint" if self.mask_image is not None else "img2img")
        return "+".join(parts) or "text2img"


@dataclass(frozen=True)
class GeneratedImages:
    """What a generator made: RGB images in request order, and what the call consumed.

    ``sent`` holds parameters a provider chose or was sent beyond the request (size, quality, n);
    ``revised_prompts`` a provider's rewrite of the prompt per image, where it reports one;
    ``load_seconds`` the part of the call spent loading or placing the model; ``adjustments`` what
    the model changed or did not use of the request (a prompt cut to its text encoder's window,
    fewer denoising steps run than asked).
    """

    images: list[Image.Image]
    usage: Usage | None = None
    sent: dict[str, Any] = field(default_factory=dict)
    revised_prompts: list[str | None] = field(default_factory=list)
    load_seconds: float = 0.0
    adjustments: list[Adjustment] = field(default_factory=list)


@runtime_checkable
class ImageGenerator(Protocol):
    """Text to image, and edits (init image, mask, references, ControlNet controls)."""

    name: str
    capabilities: Capabilities

    async def generate(self, request: ImageRequest, *, progress: Progress | None = None) -> GeneratedImages:
        """Make ``request.num_images`` images (``len(request.seeds)`` when seeded).

        Cancelling the calling task stops the work where the model allows (between denoising steps
        for local diffusion models).

        Raises:
            InvalidArgument: a value only the model itself can refuse.
            Busy: no capacity now; try again.
            BackendError: the model failed.
        """
        ...


# --- chat ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatAnswer:
    """A chat model's answer: the text, the tokens it generated, and usage where metered."""

    text: str
    tokens: int
    usage: Usage | None = None
    load_seconds: float = 0.0


@runtime_checkable
class VisionChat(Protocol):
    """One or more images plus a prompt, to text."""

    name: str
    capabilities: Capabilities

    async def answer(
        self,
        images: Sequence[Image.Image],
        prompt: str,
        *,
        max_tokens: int,
        detail: Detail | None = None,
        schema: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> ChatAnswer:
        """Answer ``prompt`` about ``images`` (RGB, at most ``capabilities.images_per_request``).

        With ``schema`` (a checked JSON Schema) the answer should be JSON matching it: through the
        model's structured output where it has one, else by asking for it; the caller validates.
        """
        ...


@runtime_checkable
class YesNoJudge(Protocol):
    """A vision-language model that scores a yes/no question by its token probabilities.

    Handles offer it where ``capabilities.yes_probability`` is true (local transformers VLMs: the
    answer's likelihood; hosted models with log-probabilities). Others are asked and their answer
    parsed.
    """

    name: str
    capabilities: Capabilities

    async def p_yes(self, image: Image.Image, question: str) -> float:
        """P("yes") for ``question`` about ``image`` (RGB), normalised over the answers yes and no:
        a float in [0, 1]."""
        ...


@runtime_checkable
class TextChat(Protocol):
    """A text-only chat model (prompt rewriting, fact extraction)."""

    name: str
    capabilities: Capabilities

    async def complete(
        self, system: str, prompt: str, *, max_tokens: int, progress: Progress | None = None
    ) -> ChatAnswer:
        """One chat turn: ``system`` instructions and the user's ``prompt``; greedy where local."""
        ...


# --- image-text embedding -----------------------------------------------------------------------


@runtime_checkable
class ImageTextEmbedder(Protocol):
    """A dual encoder (CLIP, SigLIP): images and texts in one embedding space.

    Embeddings are L2-normalised float32 rows. ``logit_scale`` and ``logit_bias`` turn a cosine
    similarity into the model's logit: ``scale * cos + bias`` (bias 0 for CLIP).
    """

    name: str
    capabilities: Capabilities

    async def embed_images(self, images: Sequence[Image.Image]) -> list[Embedding]:
        """One embedding per image, shape (dim,) each."""
        ...

    async def classify(self, image: Image.Image, texts: Sequence[str]) -> list[float]:
        """One probability per text: a softmax over the model's logits, summing to 1 (CLIP), or each
        logit's sigmoid, independent of the other texts (``capabilities.sigmoid_scores``: SigLIP)."""
        ...

    async def similarities(
        self, images: Sequence[Image.Image], texts: Sequence[str]
    ) -> tuple[list[list[float]], float]:
        """Cosine similarity of each image to each text (a row per image), and the logit scale."""
        ...


# --- text reading and object detection -------------------------------------------------------

Box = tuple[float, float, float, float]
"""An axis-aligned box in pixels of the image it was found in: (left, top, right, bottom)."""


@dataclass(frozen=True)
class TextLine:
    """One line of text an OCR engine read: the text, its confidence (0-1) and its box."""

    text: str
    score: float
    box: Box


@runtime_checkable
class TextReader(Protocol):
    """Optical character recognition: the lines of text in an image."""

    name: str

    async def read(self, image: Image.Image) -> list[TextLine]:
        """Every line of text found in ``image`` (RGB), top to bottom, with a confidence each.

        Raises:
            BackendError: the engine failed or is not installed (the message says how to install it).
        """
        ...


@dataclass(frozen=True)
class Detection:
    """One object a detector found: which query it matched, its confidence (0-1) and its box."""

    label: str
    score: float
    box: Box


@runtime_checkable
class ObjectDetector(Protocol):
    """Zero-shot (open-vocabulary) object detection: boxes for objects named in words."""

    name: str
    capabilities: Capabilities

    async def detect(self, image: Image.Image, labels: Sequence[str], threshold: float) -> list[Detection]:
        """The boxes in ``image`` (RGB) matching any of ``labels`` scoring above ``threshold``,
        best first; each detection's ``label`` is one of ``labels``."""
        ...


# --- the rest the tools need ------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The safety filter's judgement of one image."""

    flagged: bool
    category: str = ""
    score: float = 0.0
    reason: str = ""


@runtime_checkable
class SafetyChecker(Protocol):
    """Screens generated images before they are stored."""

    @property
    def enabled(self) -> bool:
        """False when configured off: every image passes unscreened."""
        ...

    async def screen(self, images: Sequence[Image.Image]) -> list[Verdict]:
        """One verdict per image, in order. Raises when it cannot judge (callers fail closed)."""
        ...


@runtime_checkable
class ControlPreprocessor(Protocol):
    """Turns a picture into a control map of one type (canny edges, depth, ...)."""

    control_type: str

    async def __call__(self, image: Image.Image, settings: Mapping[str, Any]) -> Image.Image:
        """The control map (RGB) of ``image``; ``settings`` are the type's own knobs (thresholds)."""
        ...


Handle = ImageGenerator | VisionChat | TextChat | ImageTextEmbedder | ObjectDetector
