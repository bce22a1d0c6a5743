"""The engine interface: what a local backend's loaded models offer the pool, and the requests the
pool's handles pass them. No torch here.

A :class:`~multimodal_mcp.registry.LocalBackend` returns a loaded model from ``load``; the pool keeps
it within its device budget (``memory_bytes``, ``move_to``) and runs its blocking methods on the
device's lane (one worker thread per device). Which methods it needs depends on its task:

- ``text_to_image``: :class:`LocalImageGenerator` (``check`` and ``generate``);
- ``vlm``: ``answer(images, prompt, max_tokens) -> (text, tokens)``;
- ``text``: ``complete(system, prompt, max_tokens) -> (text, tokens)``;
- ``clip``: ``encode_images``, ``encode_texts`` and ``logit_parameters`` (see ``backends/clip.py``);
- ``controlnet``, ``ip_adapter`` and ``lora``: only the two above; a generator attaches them per request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

StepCallback = Callable[[int, int], None]
"""Called from the worker thread after each denoising step with (step, total)."""


class Cancelled(Exception):
    """Raised inside a worker when the request that started it was cancelled."""


@dataclass
class CancelToken:
    """Checked by long-running model work between steps."""

    _event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass(frozen=True)
class ControlInput:
    """One ControlNet condition: the loaded ControlNet and the control map it is steered by."""

    controlnet: Any
    image: Image.Image
    scale: float


@dataclass(frozen=True)
class ReferenceInput:
    """An IP-Adapter condition: the loaded adapter, the reference picture and how much it counts."""

    adapter: Any
    image: Image.Image
    scale: float


@dataclass(frozen=True)
class LoraInput:
    """A LoRA condition: the configured name (its adapter name), the loaded weights and the scale."""

    name: str
    weights: Any
    scale: float


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: str
    seeds: list[int]
    controls: tuple[ControlInput, ...] = ()
    init_image: Image.Image | None = None  # img2img / inpainting: the picture to start from
    mask_image: Image.Image | None = None  # inpainting: L image, 255 = repaint
    strength: float | None = None  # img2img / inpainting: how much of the picture is re-noised
    reference: ReferenceInput | None = None  # IP-Adapter
    loras: tuple[LoraInput, ...] = ()  # attached for this request only
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestNote:
    """Something a model changes or does not use of a request, for the caller: the argument, a
    sentence, and for prompts the text the model's text encoder did not read."""

    argument: str
    message: str
    dropped: str | None = None


class LoadedModel(Protocol):
    """What the pool needs of every loaded model."""

    def memory_bytes(self) -> int:
        """Bytes its weights take (measured after loading)."""
        ...

    def move_to(self, device: str) -> None:
        """Move the weights to ``device`` (a torch device name): the pool offloads idle GPU models."""
        ...


class LocalImageGenerator(LoadedModel, Protocol):
    """A loaded text-to-image model. Both methods are blocking; ``generate`` runs on a device lane."""

    def check(self, request: GenerationRequest) -> None:
        """Refuse what only the loaded model can tell (raises InvalidArgument/UnsupportedOperation)."""
        ...

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None, cancel: CancelToken
    ) -> list[Image.Image]:
        """One RGB image per seed. Call ``on_step(step, total)`` after each step and
        ``cancel.raise_if_cancelled()`` between steps. With ``mask_image``, pixels outside the mask
        should come back unchanged when the model's capabilities say ``exact_outside_mask``."""
        ...

    # Optional: ``notes(request) -> list[RequestNote]``, what the model will change or not use of
    # ``request`` (run on the device lane before ``generate``; cheap, e.g. tokenizing the prompt).


@dataclass(frozen=True)
class LoadContext:
    """What a loader needs besides the spec: where to put the model and where tiny models live."""

    device: str
    tiny_dir: Path


def json_prompt(prompt: str, schema: Mapping[str, Any]) -> str:
    """Constrained prompting for models without structured output: the schema, and JSON only."""
    return (
        f"{prompt}\n\nAnswer with only a JSON value (no other text, no code fences) that matches this "
        f"JSON Schema:\n{json.dumps(schema, separators=(',', ':'))}"
    )
