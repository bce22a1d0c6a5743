"""Reading text in images with RapidOCR: PP-OCR detection and recognition as ONNX graphs that ship
inside the ``rapidocr`` wheel, run on the CPU by onnxruntime. Nothing is downloaded.

Install with ``pip install 'multimodal-mcp[ocr]'``. The engine loads on first use (about 1-2 s), in
the calling worker thread, and is shared by every call; one call runs at a time.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any

import anyio.to_thread
from PIL import Image

from multimodal_mcp.errors import BackendError
from multimodal_mcp.handles import TextLine

logger = logging.getLogger(__name__)

RAPIDOCR = "rapidocr"
INSTALL_HINT = "pip install 'multimodal-mcp[ocr]'"


class RapidOcrReader:
    """The server's :class:`~multimodal_mcp.handles.TextReader`: RapidOCR, loaded once on first use."""

    name = RAPIDOCR

    def __init__(self, engine: Any = None) -> None:
        self._engine = engine
        self._lock = threading.Lock()

    async def read(self, image: Image.Image) -> list[TextLine]:
        """:meth:`read_now` off the event loop."""
        return await anyio.to_thread.run_sync(self.read_now, image.convert("RGB"))

    def read_now(self, image: Image.Image) -> list[TextLine]:
        """Every line of text in ``image``, top to bottom then left to right. Blocking.

        Raises:
            BackendError: RapidOCR is not installed, or failed on this image.
        """
        with self._lock:
            engine = self._loaded()
            try:
                found = engine(image)
            except Exception as exc:
                logger.error("RapidOCR failed on a %dx%d image", image.width, image.height, exc_info=exc)
                raise BackendError("the OCR engine failed on this image; try again") from None
        texts, scores, boxes = found.txts or (), found.scores or (), found.boxes
        lines = []
        for text, score, points in zip(texts, scores, boxes if boxes is not None else (), strict=False):
            xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
            lines.append(TextLine(str(text), round(float(score), 4), (min(xs), min(ys), max(xs), max(ys))))
        return sorted(lines, key=lambda line: (round(line.box[1] / 8), line.box[0]))

    def _loaded(self) -> Any:
        if self._engine is None:
            try:
                module = importlib.import_module(RAPIDOCR)
            except ImportError as exc:
                raise BackendError(
                    f"text checks need the OCR engine, which is not installed ({exc.name} is missing): "
                    f"{INSTALL_HINT}"
                ) from None
            started = time.perf_counter()
            self._engine = module.RapidOCR(params={"Global.log_level": "critical"})
            logger.info("RapidOCR loaded in %.2f s", time.perf_counter() - started)
        return self._engine
