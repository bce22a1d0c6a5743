"""A fake hub: tool logic tested against models in memory, with no torch and no model files.

Tools reach models only through ``services.hub``. :class:`FakeHub` is the real
:class:`~multimodal_mcp.hub.ModelHub` (its name resolution and capability check, ``pick``, ``check``,
``spec``, ``paid``, ``controlnet_for``, are part of the logic under test) with the backends and the
model pool swapped out: each model's capabilities and handle are declared here, and the handles
record what they were asked.

- :class:`FakeImageGenerator` paints solid images, one colour per seed (:func:`solid_colour`).
- :class:`FakeVisionChat` and :class:`FakeTextChat` answer canned text (or a function of the question).
- :class:`FakeEmbedder` embeds an image by its mean colour and gives fixed cosines for texts.

The ``fake_services`` fixture (a plugin of tests/conftest.py) gives :class:`Services` over
:func:`fake_config`'s models with the real ImageStore, ImageResolver and JobManager in ``tmp_path``,
and a model pool that never loads anything; ``fake_hub`` is its hub.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.capabilities import Capabilities, SizeRule
from multimodal_mcp.config import Config, ModelSpec, load_config
from multimodal_mcp.errors import UnsupportedOperation
from multimodal_mcp.handles import (
    ChatAnswer,
    Detail,
    GeneratedImages,
    Handle,
    ImageRequest,
    Progress,
    TextReader,
    Usage,
)
from multimodal_mcp.hub import ModelHub
from multimodal_mcp.pool import ModelPool
from multimodal_mcp.server.app import create_services
from multimodal_mcp.tools.common import Services

from helpers import cpu_only

# --- handles ------------------------------------------------------------------------------------


def solid_colour(seed: int) -> tuple[int, int, int]:
    """The colour FakeImageGenerator paints the image of ``seed`` (or of its index, unseeded)."""
    return (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)


@dataclass
class FakeImageGenerator:
    """Paints each requested image in one colour: ``solid_colour(seed)``, or of the image's index
    for models that take no seed. Sizes: the request's, else ``default_size``."""

    name: str
    capabilities: Capabilities
    default_size: tuple[int, int] = (64, 64)
    sent: dict[str, Any] = field(default_factory=dict)
    revised_prompt: str | None = None
    usage: Usage | None = None
    load_seconds: float = 0.0
    requests: list[ImageRequest] = field(default_factory=list)

    async def generate(self, request: ImageRequest, *, progress: Progress | None = None) -> GeneratedImages:
        self.requests.append(request)
        keys = list(request.seeds) if request.seeds is not None else list(range(request.num_images))
        size = (request.width or self.default_size[0], request.height or self.default_size[1])
        images = [Image.new("RGB", size, solid_colour(key)) for key in keys]
        if progress is not None:
            await progress(1, 1, f"{self.name}: done")
        return GeneratedImages(
            images=images,
            usage=self.usage,
            sent=dict(self.sent),
            revised_prompts=[self.revised_prompt] * len(images) if self.revised_prompt else [],
            load_seconds=self.load_seconds,
        )


@dataclass(frozen=True)
class VisionCall:
    """One question a FakeVisionChat was asked."""

    images: list[Image.Image]
    prompt: str
    max_tokens: int
    detail: Detail | None
    schema: Mapping[str, Any] | None


Reply = str | Callable[[VisionCall], str]


@dataclass
class FakeVisionChat:
    """Answers ``reply`` (text, or a function of the call) and records every call."""

    name: str
    capabilities: Capabilities
    reply: Reply = "A fake answer about a red square."
    usage: Usage | None = None
    calls: list[VisionCall] = field(default_factory=list)

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
        call = VisionCall(list(images), prompt, max_tokens, detail, schema)
        self.calls.append(call)
        text = self.reply(call) if callable(self.reply) else self.reply
        return ChatAnswer(text=text, tokens=len(text.split()), usage=self.usage)


@dataclass
class FakeTextChat:
    """A text model answering ``reply``; records (system, prompt, max_tokens) per call."""

    name: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    reply: str = "A detailed prompt."
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    async def complete(
        self, system: str, prompt: str, *, max_tokens: int, progress: Progress | None = None
    ) -> ChatAnswer:
        self.calls.append((system, prompt, max_tokens))
        return ChatAnswer(text=self.reply, tokens=len(self.reply.split()))


def image_vector(image: Image.Image) -> np.ndarray:
    """FakeEmbedder's embedding of an image: its mean RGB and a constant, L2-normalised."""
    r, g, b = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)
    vector = np.array([r, g, b, 64.0], dtype=np.float32)
    return vector / np.linalg.norm(vector)


@dataclass
class FakeEmbedder:
    """A dual encoder with fixed answers: images embed by :func:`image_vector`; every image's cosine
    with a text is ``cosines[text]`` (``baseline`` for texts not listed)."""

    name: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    cosines: dict[str, float] = field(default_factory=dict)
    baseline: float = 0.1
    logit_scale: float = 100.0
    texts_seen: list[list[str]] = field(default_factory=list)

    async def embed_images(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        return [image_vector(image) for image in images]

    def _row(self, texts: Sequence[str]) -> list[float]:
        self.texts_seen.append(list(texts))
        return [self.cosines.get(text, self.baseline) for text in texts]

    async def classify(self, image: Image.Image, texts: Sequence[str]) -> list[float]:
        logits = [self.logit_scale * cosine for cosine in self._row(texts)]
        top = max(logits)
        weights = [math.exp(logit - top) for logit in logits]
        return [w / sum(weights) for w in weights]

    async def similarities(
        self, images: Sequence[Image.Image], texts: Sequence[str]
    ) -> tuple[list[list[float]], float]:
        row = self._row(texts)
        return [list(row) for _ in images], self.logit_scale


# --- the hub ------------------------------------------------------------------------------------


class FakeHub(ModelHub):
    """The hub over fake handles: capabilities are each handle's (with the config's overrides), the
    handles are the given objects, and no model is ever loaded."""

    def __init__(
        self, config: Config, pool: ModelPool, handles: Iterable[Handle], reader: TextReader | None = None
    ) -> None:
        super().__init__(config, pool, HostedConnections(config.hosted))
        self.reader = reader
        self.fakes: dict[str, Handle] = {handle.name: handle for handle in handles}
        unknown = sorted(set(self.fakes) - set(config.models))
        assert not unknown, f"fake handles for models the config does not have: {unknown}"

    def capabilities(self, name: str) -> Capabilities:
        spec = self.spec(name)
        fake = self.fakes.get(name)
        declared = fake.capabilities if fake is not None else Capabilities()
        return declared.merged(spec.capabilities)

    def text_reader(self) -> TextReader:
        """The given OCR reader; without one, the real hub's (RapidOCR)."""
        return self.reader if self.reader is not None else super().text_reader()

    def handle(self, name: str) -> Handle:
        self.spec(name)  # an unknown name is the real hub's error
        fake = self.fakes.get(name)
        if fake is None:
            raise UnsupportedOperation(f"model {name!r} has no fake handle (tests/fake_hub.py)")
        return fake


# --- the default fake models --------------------------------------------------------------------

DIFFUSION = Capabilities(
    seed=True,
    negative_prompt=True,
    steps=True,
    guidance_scale=True,
    schedulers=("euler", "dpm++"),
    sizes=SizeRule(multiple_of=8, max_side=1024),
    max_images=4,
)
HOSTED_IMAGES = Capabilities(
    sizes=SizeRule(fixed=((1024, 1024), (1536, 1024)), labels=("1:1", "3:2")),
    qualities=("low", "high"),
    max_images=1,
)
ONE_IMAGE_VLM = Capabilities(images_per_request=1, structured_output="prompted")
MULTI_IMAGE_VLM = Capabilities(
    images_per_request=4, detail_levels=("low", "high", "auto"), structured_output="native"
)

MODELS: dict[str, dict[str, Any]] = {
    "fake-sd": {
        "task": "text_to_image",
        "backend": "diffusers",
        "source": "fake/sd",
        "defaults": {"steps": 4, "guidance_scale": 5.0, "width": 64, "height": 64, "scheduler": "euler"},
    },
    "fake-hosted": {"task": "text_to_image", "backend": "openai", "source": "fake-image-api"},
    "fake-vlm": {
        "task": "vlm",
        "backend": "transformers",
        "source": "fake/vlm",
        "defaults": {"max_tokens": 32},
    },
    "fake-vlm-multi": {"task": "vlm", "backend": "transformers", "source": "fake/vlm-multi"},
    "fake-clip": {"task": "clip", "backend": "transformers", "source": "fake/clip"},
    "fake-text": {"task": "text", "backend": "transformers", "source": "fake/text"},
}
DEFAULTS = {
    "text_to_image": "fake-sd",
    "controlled": "fake-sd",
    "clip": "fake-clip",
    "vlm": "fake-vlm",
    "prompt_rewrite": "fake-text",
}


def fake_handles() -> list[Handle]:
    return [
        FakeImageGenerator("fake-sd", DIFFUSION),
        FakeImageGenerator(
            "fake-hosted", HOSTED_IMAGES, default_size=(1024, 1024), sent={"size": "1024x1024", "n": 1}
        ),
        FakeVisionChat("fake-vlm", ONE_IMAGE_VLM),
        FakeVisionChat("fake-vlm-multi", MULTI_IMAGE_VLM),
        FakeEmbedder("fake-clip"),
        FakeTextChat("fake-text"),
    ]


def fake_config(
    tmp_path: Path,
    allowed_root: Path,
    models: Mapping[str, Mapping[str, Any]] = MODELS,
    defaults: Mapping[str, str] = DEFAULTS,
    **server: Any,
) -> Config:
    """A configuration of ``models`` only: the tiny profile's server settings with ``server``'s
    [server] keys on top, a private store, and no tiny models (FakeHub never reaches the pool)."""
    base = load_config(
        profile="tiny",
        cache_dir=tmp_path / "cache",
        home=tmp_path,
        default_allowed_roots=[allowed_root],
        overrides={"store_dir": tmp_path / "store", "tiny_dir": tmp_path / "no-tiny-models", **server},
    )
    return Config(
        profile=base.profile,
        server=base.server,
        models={name: ModelSpec.model_validate(spec) for name, spec in models.items()},
        defaults=dict(defaults),  # type: ignore[arg-type]
        hosted=base.hosted,
    )


def fake_services_for(
    config: Config, handles: Iterable[Handle], reader: TextReader | None = None
) -> Services:
    """The real services over ``config`` (store, resolver, jobs, a pool that loads nothing) with a
    FakeHub over ``handles`` (and ``reader`` as its OCR engine, if given)."""
    services = create_services(config, devices=cpu_only())
    return dataclasses.replace(services, hub=FakeHub(config, services.pool, handles, reader))


@pytest.fixture
def fake_services(tmp_path: Path, allowed_root: Path) -> Services:
    return fake_services_for(fake_config(tmp_path, allowed_root), fake_handles())


@pytest.fixture
def fake_hub(fake_services: Services) -> FakeHub:
    assert isinstance(fake_services.hub, FakeHub)
    return fake_services.hub
