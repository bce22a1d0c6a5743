"""The hub: from a model name to its handle, its capabilities, and the check of a call against them.

Tools ask the hub, never a backend: ``hub.image_generator("sdxl")`` gives an
:class:`~multimodal_mcp.handles.ImageGenerator` whether the model runs on this machine's pool or a
provider's API. Which it is, is the registry's business (:mod:`multimodal_mcp.registry`): local
backends' models are wrapped in pool-backed handles, hosted backends make their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, TypedDict

from multimodal_mcp import registry
from multimodal_mcp.backends.hosted import HostedConnections
from multimodal_mcp.capabilities import Capabilities, refusal
from multimodal_mcp.config import Config, DefaultFor, ModelSpec, Task
from multimodal_mcp.errors import UnknownModel, UnsupportedOperation
from multimodal_mcp.handles import (
    ControlPreprocessor,
    Handle,
    ImageGenerator,
    ImageTextEmbedder,
    ObjectDetector,
    TextChat,
    TextReader,
    VisionChat,
)
from multimodal_mcp.imaging.analysis import CannyEdges
from multimodal_mcp.pool.core import ModelPool
from multimodal_mcp.pool.handles import (
    PooledDepthEstimator,
    PooledDetector,
    PooledEmbedder,
    PooledImageGenerator,
    PooledTextChat,
    PooledVisionChat,
)

_POOLED: dict[str, Callable[[ModelPool, str, Capabilities], Handle]] = {
    "text_to_image": PooledImageGenerator,
    "vlm": PooledVisionChat,
    "text": PooledTextChat,
    "clip": PooledEmbedder,
    "detector": PooledDetector,
}
_KINDS: dict[str, type[Handle]] = {
    "text_to_image": ImageGenerator,
    "vlm": VisionChat,
    "text": TextChat,
    "clip": ImageTextEmbedder,
    "detector": ObjectDetector,
}


_ANNOTATORS = {
    "pose": "an OpenPose annotator (controlnet_aux OpenposeDetector)",
    "lineart": "a line-art annotator (controlnet_aux LineartDetector)",
    "softedge": "a soft-edge annotator (controlnet_aux HEDdetector or PidiNetDetector)",
    "segmentation": "a segmentation annotator (e.g. UperNet on ADE20K, as the seg ControlNets were trained)",
    "normal": "a surface-normal annotator (controlnet_aux NormalBaeDetector)",
}
"""What makes each map type from a photo, for the errors of the types this server does not make."""


class Engine(Protocol):
    """Where local models run when not in this process's pool: the engine boundary.

    With an engine (``serve --engine ray``: :class:`multimodal_mcp.cluster.engine.RayEngine`), the
    hub asks it first for the handle of each local model; it answers a handle whose calls cross a
    process boundary (addressed by model name, with plain-data requests and answers), or None to
    leave that model to this process's pool. Hosted models never go through it.
    """

    def handle(self, name: str, spec: ModelSpec, capabilities: Capabilities) -> Handle | None:
        """The handle of model ``name`` (a ``spec.task`` handle; for a depth model, the depth
        :class:`ControlPreprocessor`), or None when it runs here."""
        ...

    def location(self, name: str) -> str | None:
        """Where model ``name`` runs, for listings (e.g. ``ray:sdxl``), or None when it runs here."""
        ...


class Whereabouts(TypedDict):
    """Where a model runs and how it is doing, as ``list_models`` shows it (see :meth:`ModelHub.where`)."""

    hosted: bool
    loaded: bool
    location: str | None
    device: str | None
    memory_bytes: int | None
    in_use: int
    queue_depth: int
    last_used_seconds_ago: float | None
    api_key_set: bool | None
    api_key_env: str | None
    status: str


class ModelHub:
    """Every configured model by name: its spec, capabilities and handle. One per server."""

    def __init__(
        self,
        config: Config,
        pool: ModelPool,
        connections: HostedConnections,
        engine: Engine | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.connections = connections
        self.engine = engine
        self._capabilities: dict[str, Capabilities] = {}
        self._image_sides: dict[str, int] = {}
        self._handles: dict[str, Handle] = {}
        self._preprocessors: dict[str, ControlPreprocessor] = {"canny": CannyEdges()}
        self._reader: TextReader | None = None

    # --- names and specs ------------------------------------------------------------------------

    def spec(self, name: str) -> ModelSpec:
        spec = self.config.models.get(name)
        if spec is None:
            raise UnknownModel(f"no model named {name!r}; configured: {', '.join(self.config.models)}")
        return spec

    def models_for(self, task: Task) -> list[str]:
        return self.config.models_for(task)

    def pick(self, requested: str | None, default_for: DefaultFor, task: Task) -> str:
        """The requested model, or the configured default; errors name the models that fit."""
        fitting = self.models_for(task)
        name = requested if requested is not None else self.config.defaults.get(default_for)
        if name is None:
            raise UnknownModel(
                f"no default model is configured for {default_for}; pass model= one of {fitting}"
            )
        spec = self.config.models.get(name)
        if spec is None:
            raise UnknownModel(
                f"no model named {name!r}; models for this tool: {', '.join(fitting) or 'none'}"
            )
        if spec.task != task:
            raise UnsupportedOperation(
                f"model {name!r} is a {spec.task} model; this tool needs a {task} model: "
                f"{', '.join(fitting) or 'none'}"
            )
        return name

    def paid(self, name: str) -> bool:
        return self.spec(name).is_paid

    def backend(self, name: str) -> registry.Backend:
        return registry.get(self.spec(name).backend)

    # --- capabilities ---------------------------------------------------------------------------

    def capabilities(self, name: str) -> Capabilities:
        """What model ``name`` honours on this server: its backend's declaration with the config's
        overrides, within the server's limits (images per call, largest side)."""
        found = self._capabilities.get(name)
        if found is None:
            spec = self.spec(name)
            declared = self.backend(name).capabilities(name, spec, self.config).merged(spec.capabilities)
            limits = self.config.server.limits
            found = self._capabilities[name] = declared.within(limits.max_images, limits.max_side)
        return found

    def image_side(self, name: str) -> int | None:
        """The short side, in pixels, of the images model ``name``'s processor takes (see
        :meth:`~multimodal_mcp.registry.LocalBackend.image_side`), so that an input is decoded no
        larger than that; None when not known before loading. A known side is remembered."""
        found = self._image_sides.get(name)
        if found is None:
            backend = self.backend(name)
            side = None
            if isinstance(backend, registry.LocalBackend):
                side = backend.image_side(name, self.spec(name), self.config)
            if side is not None:
                self._image_sides[name] = found = side
        return found

    def check(self, name: str, given: Mapping[str, object]) -> None:
        """Refuse, before any work, an argument model ``name`` does not honour.

        ``given`` holds only the arguments the caller gave. The error names the argument, what the
        model takes instead, and the configured models that do take it.

        Raises:
            UnsupportedOperation: written from the capabilities.
        """
        task = self.spec(name).task
        others = {other: self.capabilities(other) for other in self.models_for(task)}
        message = refusal(name, self.capabilities(name), given, others)
        if message is not None:
            raise UnsupportedOperation(message)

    # --- handles --------------------------------------------------------------------------------

    def handle(self, name: str) -> Handle:
        """The handle of model ``name`` for its task (cached per server)."""
        found = self._handles.get(name)
        if found is not None:
            return found
        spec = self.spec(name)
        if spec.task not in _KINDS:
            raise UnsupportedOperation(
                f"model {name!r} is a {spec.task} model, a component other models attach; it has no handle"
            )
        backend = self.backend(name)
        if isinstance(backend, registry.LocalBackend):
            remote = self.engine.handle(name, spec, self.capabilities(name)) if self.engine else None
            made: Handle = remote or _POOLED[spec.task](self.pool, name, self.capabilities(name))
        elif isinstance(backend, registry.HostedBackend):
            settings = self.config.hosted.for_model(name, spec)
            made = backend.handle(name, spec, self.connections.connection(backend, settings))
        else:  # pragma: no cover - the registry only holds the two kinds
            raise UnsupportedOperation(f"backend {backend.name!r} has no way to run model {name!r}")
        if not isinstance(made, _KINDS[spec.task]):
            raise UnsupportedOperation(
                f"backend {backend.name!r} gave model {name!r} a handle that is not a "
                f"{_KINDS[spec.task].__name__}"
            )
        self._handles[name] = made
        return made

    def _for_task(self, name: str, task: Task) -> Handle:
        spec = self.spec(name)
        if spec.task != task:
            raise UnsupportedOperation(f"model {name!r} is a {spec.task} model, not a {task} model")
        return self.handle(name)

    def image_generator(self, name: str) -> ImageGenerator:
        handle = self._for_task(name, "text_to_image")
        assert isinstance(handle, ImageGenerator)
        return handle

    def vision_chat(self, name: str) -> VisionChat:
        handle = self._for_task(name, "vlm")
        assert isinstance(handle, VisionChat)
        return handle

    def text_chat(self, name: str) -> TextChat:
        """A text model, or a chat model of another task whose handle also takes text alone."""
        spec = self.spec(name)
        if spec.task == "text":
            text = self._for_task(name, "text")
            assert isinstance(text, TextChat)
            return text
        handle = self.handle(name) if spec.task in _KINDS else None
        if not isinstance(handle, TextChat):
            raise UnsupportedOperation(f"model {name!r} is a {spec.task} model and takes no text-only chat")
        return handle

    def embedder(self, name: str) -> ImageTextEmbedder:
        handle = self._for_task(name, "clip")
        assert isinstance(handle, ImageTextEmbedder)
        return handle

    def object_detector(self, name: str) -> ObjectDetector:
        handle = self._for_task(name, "detector")
        assert isinstance(handle, ObjectDetector)
        return handle

    def text_reader(self) -> TextReader:
        """The server's OCR engine (RapidOCR, on the CPU; it loads on first use, not here)."""
        if self._reader is None:
            from multimodal_mcp.backends.ocr import RapidOcrReader

            self._reader = RapidOcrReader()
        return self._reader

    # --- components a generator attaches by name ------------------------------------------------

    def controlnet_for(self, base: str, control_type: str, requested: str | None) -> str:
        """The ControlNet to use with ``base``; errors name the models that can do ``control_type``.

        A model whose backend carries the ControlNet inside the model (``own_controlnets``: a ComfyUI
        workflow with a ControlNetApply node) answers its own name for the control types its
        capabilities list, the way :meth:`ip_adapter_for` answers None for models that take
        references themselves; another type is refused like any argument the model does not take.
        """
        models = self.config.models
        if self.backend(base).own_controlnets:
            if requested not in (None, base):
                raise UnsupportedOperation(
                    f"model {base!r} carries its ControlNet in its own workflow; omit controlnet="
                )
            self.check(base, {"control_type": control_type})
            return base
        fitting = [
            name
            for name, spec in models.items()
            if spec.task == "controlnet" and spec.control_type == control_type and base in spec.base_models
        ]
        if requested is not None:
            spec = models.get(requested)
            if spec is None or spec.task != "controlnet":
                raise UnknownModel(
                    f"no ControlNet named {requested!r}; ControlNets for {base!r}: {fitting or 'none'}"
                )
            if requested not in fitting:
                raise UnsupportedOperation(
                    f"ControlNet {requested!r} ({spec.control_type}, for {list(spec.base_models)}) does not "
                    f"fit model {base!r} with control_type {control_type!r}; fitting: {fitting or 'none'}"
                )
            return requested
        if not fitting:
            able = sorted(
                {b for spec in models.values() if spec.control_type == control_type for b in spec.base_models}
            )
            raise UnsupportedOperation(
                f"model {base!r} has no {control_type} ControlNet configured; "
                f"models that can: {able or 'none'}"
            )
        return fitting[0]

    def ip_adapter_for(self, base: str) -> str | None:
        """The IP-Adapter configured for ``base``, or None when the model takes reference pictures
        itself (its capabilities say so) or takes none (the capability check refuses those)."""
        for name, spec in self.config.models.items():
            if spec.task == "ip_adapter" and base in spec.base_models:
                return name
        return None

    def where(self, name: str) -> Whereabouts:
        """Where model ``name`` runs and how it is doing, for listings: its place in the pool (local
        models) or its provider's key status (hosted ones), and ``status``, a short phrase."""
        backend = self.backend(name)
        found = Whereabouts(
            hosted=backend.hosted,
            loaded=False,
            location=None,
            device=None,
            memory_bytes=None,
            in_use=0,
            queue_depth=0,
            last_used_seconds_ago=None,
            api_key_set=None,
            api_key_env=None,
            status="not loaded",
        )
        if isinstance(backend, registry.HostedBackend):
            settings = self.config.hosted.for_model(name, self.spec(name))
            found["api_key_set"] = settings.key_from is not None
            found["api_key_env"] = settings.api_key_env or None
            at = f" at {settings.base_url}" if settings.own_endpoint else ""
            found["status"] = f"hosted ({backend.name}{at}, {backend.key_status(settings)})"
            return found
        remote = self.engine.location(name) if self.engine is not None else None
        if remote is not None:
            found["location"] = remote
            found["status"] = f"served by {remote}"
            return found
        state = {s.name: s for s in self.pool.states()}.get(name)
        if state is None:
            return found
        now = self.pool.now()
        found["loaded"] = state.loaded
        found["location"] = state.location
        found["device"] = state.device
        found["memory_bytes"] = state.memory_bytes
        found["in_use"] = state.in_use
        found["queue_depth"] = state.queue_depth
        if state.last_used is not None:
            found["last_used_seconds_ago"] = round(now - state.last_used, 1)
        if state.loaded:
            found["status"] = f"on {state.location}"
        return found

    def preprocessor(self, control_type: str) -> ControlPreprocessor | None:
        """What turns a photo into a ``control_type`` map: canny edges (OpenCV), depth (the
        ``[defaults] depth`` model, run in the pool or by the engine); None for scribble, a drawing
        that is its own map.

        Raises:
            UnsupportedOperation: this server makes no such map from a photo (no depth model
                configured; pose, lineart, soft edges, segmentation and normals need annotator models
                it does not run). The message says what to configure or download, and that
                ``preprocess=false`` passes a prepared map as given.
        """
        found = self._preprocessors.get(control_type)
        if found is not None or control_type == "scribble":
            return found
        as_given = "or pass a prepared map with preprocess=false"
        if control_type == "depth":
            name = self.config.defaults.get("depth")
            if name is None:
                raise UnsupportedOperation(
                    "control_type='depth' from a photo needs a depth-estimation model: configure one (task "
                    '= "depth", e.g. source = "depth-anything/Depth-Anything-V2-Small-hf") as [defaults] '
                    f"depth, {as_given}"
                )
            if self.spec(name).task != "depth" or not isinstance(self.backend(name), registry.LocalBackend):
                raise UnsupportedOperation(
                    f"[defaults] depth = {name!r} is not a local depth model; {as_given}"
                )
            engine, capabilities = self.engine, self.capabilities(name)
            remote = engine.handle(name, self.spec(name), capabilities) if engine else None
            if isinstance(remote, ControlPreprocessor):  # run by the engine (a Ray Serve deployment)
                made: ControlPreprocessor = remote
            else:
                made = PooledDepthEstimator(self.pool, name, capabilities)
            self._preprocessors["depth"] = made
            return made
        annotator = _ANNOTATORS.get(control_type, "an annotator model")
        raise UnsupportedOperation(
            f"control_type={control_type!r} from a photo needs {annotator}, which this server does not run; "
            f"make the map with it (controlnet_aux, weights lllyasviel/Annotators) and pass it with "
            "preprocess=false"
        )

    async def aclose(self) -> None:
        """Close the hosted connections (the pool is closed by its own context)."""
        await self.connections.aclose()
