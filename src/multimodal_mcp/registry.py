"""One registry for every backend, local and hosted.

A backend is an object registered under the entry-point group ``multimodal_mcp.backends``; the
entry point's name is the value of ``backend = "..."`` in a model's config table. The built-in
backends are registered exactly as an outside package registers one, in this project's
``pyproject.toml``::

    [project.entry-points."multimodal_mcp.backends"]
    diffusers = "multimodal_mcp.backends.diffusion:backend"

Two kinds exist:

- :class:`LocalBackend`: loads weights into the model pool (``load`` runs in a worker thread and
  returns a loaded model with the engine interface of :mod:`multimodal_mcp.backends.base`); the pool
  places, evicts and runs it on a device lane.
- :class:`HostedBackend`: calls a provider's API. It makes one client per endpoint: its
  ``[hosted.<name>]`` settings, or a model's own ``base_url``/``api_key_env``/``timeout``/``headers``
  over them, and returns async handles (:mod:`multimodal_mcp.handles`).

A backend module must be cheap to import: no torch, no provider SDK at module level (import them in
``load`` or ``make_client``), since the registry loads every backend a configuration names.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from multimodal_mcp.capabilities import Capabilities

if TYPE_CHECKING:
    from multimodal_mcp.backends.base import LoadContext, LoadedModel
    from multimodal_mcp.backends.hosted import Connection
    from multimodal_mcp.config import Config, ModelSpec
    from multimodal_mcp.handles import Handle
    from multimodal_mcp.hosted_settings import HostedSettings

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "multimodal_mcp.backends"
TASKS = ("text_to_image", "controlnet", "ip_adapter", "clip", "vlm", "text", "detector", "depth")
"""Every task a model may have. Handles exist for text_to_image, vlm, text, clip and detector; controlnet and
ip_adapter models are components a text_to_image handle attaches by name; a depth model makes the depth
ControlNet's maps from photos (the hub's preprocessor for control_type depth)."""


class Backend(ABC):
    """What every backend declares as data."""

    name: str = ""
    """The value of ``backend = "..."``; set by the registry from the entry point's name."""
    title: ClassVar[str] = ""
    """How messages and listings name it, e.g. 'OpenAI'."""
    tasks: ClassVar[frozenset[str]] = frozenset()
    """The tasks its models may have."""
    hosted: ClassVar[bool] = False
    """True when its models run on a provider's API (no local weights, no device lane)."""
    paid: ClassVar[bool] = False
    """Whether its models cost money per call unless a model's config says ``paid = false``."""
    own_controlnets: ClassVar[bool] = False
    """True when its models carry their ControlNet inside themselves (a ComfyUI workflow): a model's
    capabilities list the control types it takes and ``ModelHub.controlnet_for`` names the model."""

    @abstractmethod
    def capabilities(self, name: str, spec: ModelSpec, config: Config) -> Capabilities:
        """What model ``name`` honours, known before it is loaded or called. ``config`` gives the
        other models (a base model's ControlNets, for one). The model's own ``capabilities`` table
        in the config is applied on top by the hub."""


class LocalBackend(Backend):
    """Models whose weights the pool loads and runs on a device lane."""

    @abstractmethod
    def load(self, name: str, spec: ModelSpec, ctx: LoadContext) -> LoadedModel:
        """Load model ``name`` on ``ctx.device``; blocking, run in a worker thread.

        Returns an object with ``memory_bytes()``, ``move_to(device)`` and the task's engine
        methods (see :mod:`multimodal_mcp.backends.base`).

        Raises:
            BackendError: with a message naming the model and what to do.
        """

    def image_side(self, name: str, spec: ModelSpec, config: Config) -> int | None:
        """Pixels on the short side of the images model ``name``'s processor passes to it (each side,
        for a processor that resizes to a fixed height and width), known before the model is loaded;
        None when not known (a reader of its inputs then keeps its own, larger default)."""
        return None


class HostedBackend(Backend):
    """Models behind a provider's API, reached through one client per endpoint."""

    hosted: ClassVar[bool] = True
    paid: ClassVar[bool] = True
    sdk: ClassVar[str | None] = None
    """The module the client needs (checked before the first client is made), e.g. 'openai'."""
    extra: ClassVar[str | None] = None
    """The pip extra that installs it: ``pip install 'multimodal-mcp[<extra>]'``."""

    cloud_settings: ClassVar[frozenset[str]] = frozenset()
    """The Google Cloud settings (vertexai, project, location, credentials_file) its table may set."""

    @abstractmethod
    def default_settings(self) -> HostedSettings:
        """The defaults of ``[hosted.<name>]``: the API key's environment variables, base URL, ..."""

    def complete(self, settings: HostedSettings) -> HostedSettings:
        """The settings once the file and the environment are read, with any derived from the others
        (Vertex AI: its regional endpoint from the location). The default: as they are.

        Raises:
            ValueError: settings that do not go together (reported as a configuration error)."""
        return settings

    def missing_credentials(self, connection: Connection, model: str) -> str | None:
        """Why requests for model ``model`` through ``connection`` cannot authenticate, as the whole
        message naming what to set (checked before its first client is made); ``None`` when they can.
        The default checks the API key that ``api_key_env`` names."""
        return connection.missing_key(model)

    def key_status(self, settings: HostedSettings) -> str:
        """How requests to the endpoint ``settings`` describes authenticate, in a few words for listings
        (``list_models``, ``multimodal-mcp models``): never a key or a credential itself."""
        if not settings.api_key_env:
            return "no key needed"
        return "key set" if settings.key_from is not None else f"no key: set {settings.api_key_env}"

    @abstractmethod
    def make_client(self, settings: HostedSettings) -> Any:
        """A client for the endpoint ``settings`` describes (created on first use). ``settings.api_key``
        is set unless the endpoint takes no key (``settings.api_key_env`` empty): then pass
        :data:`multimodal_mcp.backends.hosted.NO_KEY` or none, never another endpoint's key. Send
        ``settings.headers`` with every request."""

    async def close_client(self, client: Any) -> None:
        """Release the client at shutdown."""
        close = getattr(client, "aclose", None) or getattr(client, "close", None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result

    @abstractmethod
    def handle(self, name: str, spec: ModelSpec, connection: Connection) -> Handle:
        """The handle for model ``name`` (its task is ``spec.task``), calling through ``connection``
        (the endpoint's client, concurrency limit and settings). Messages name ``connection.title``
        (the provider, or 'the server at <url>' for a model's own endpoint)."""


class UnknownBackend(LookupError):
    """No backend is registered under that name."""


_lock = threading.Lock()
_backends: dict[str, Backend] | None = None


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry.name in found and found[entry.name].value != entry.value:
            logger.warning(
                "two packages register backend %r (%s and %s); using the first",
                entry.name,
                found[entry.name].value,
                entry.value,
            )
            continue
        found.setdefault(entry.name, entry)
    return found


def _load(entry: importlib.metadata.EntryPoint) -> Backend:
    obj = entry.load()
    backend = obj() if isinstance(obj, type) else obj
    if not isinstance(backend, Backend):
        raise TypeError(
            f"entry point {entry.name!r} ({entry.value}) in group {ENTRY_POINT_GROUP} is not a "
            "multimodal_mcp.registry.Backend"
        )
    backend.name = entry.name
    return backend


def backends() -> dict[str, Backend]:
    """Every registered backend by name (entry points loaded once per process)."""
    global _backends
    with _lock:
        if _backends is None:
            loaded: dict[str, Backend] = {}
            for name, entry in _entry_points().items():
                try:
                    loaded[name] = _load(entry)
                except Exception:
                    logger.exception("backend %r (%s) failed to load; it is not available", name, entry.value)
            _backends = loaded
        return dict(_backends)


def get(name: str) -> Backend:
    """The backend registered as ``name``.

    Raises:
        UnknownBackend: with the registered names in the message.
    """
    found = backends().get(name)
    if found is None:
        known = ", ".join(sorted(backends())) or "none (is multimodal-mcp installed, e.g. pip install -e .?)"
        raise UnknownBackend(
            f"no backend named {name!r} is registered; registered backends: {known}. A backend comes from "
            f"a package that registers it under the entry-point group {ENTRY_POINT_GROUP!r}"
        )
    return found


def hosted_backends() -> dict[str, HostedBackend]:
    """The registered hosted backends by name."""
    return {name: b for name, b in backends().items() if isinstance(b, HostedBackend)}


def reload() -> None:
    """Forget the loaded entry points: the next lookup reads them again (after installing a package)."""
    global _backends
    with _lock:
        _backends = None


def describe(names: Mapping[str, Backend] | None = None) -> str:
    """'name (local)' or 'name (hosted: title)' for each backend, for messages and listings."""
    return ", ".join(
        f"{n} ({f'hosted: {b.title or n}' if b.hosted else 'local'})"
        for n, b in sorted((names or backends()).items())
    )
