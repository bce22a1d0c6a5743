"""Backend-neutral request types and the interface every loaded model offers. No torch here."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    mask_image: Image.Image | None = None  # inpainting: white = repaint
    strength: float | None = None  # img2img / inpainting: how much of the picture is re-noised
    reference: ReferenceInput | None = None  # IP-Adapter
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadContext:
    """What a loader needs besides the spec: where to put the model and where tiny models live."""

    device: str
    tiny_dir: Path
