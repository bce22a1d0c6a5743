"""Decoded images kept in memory by the image store: a result's previews and the next tool in a chain
(classify, compare) read an image right after it was written or read."""

from __future__ import annotations

import threading
from collections import OrderedDict

from PIL import Image


class DecodedCache:
    """Least recently used decoded images, bounded by ``budget`` bytes of pixels; an image over a
    quarter of the budget is not kept."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._items: OrderedDict[str, tuple[Image.Image, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def remember(self, key: str, image: Image.Image) -> None:
        """Keep a copy of ``image``; evict the least recently used until the cache fits."""
        size = footprint(image)
        if size > self.budget // 4:
            return
        copy = image.copy()
        with self._lock:
            self._drop(key)
            self._items[key] = (copy, size)
            self._bytes += size
            while self._bytes > self.budget:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def get(self, key: str) -> Image.Image | None:
        """The kept image itself (callers copy it before changing it), or None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
        return hit[0] if hit is not None else None

    def forget(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old[1]


def footprint(image: Image.Image) -> int:
    """Bytes Pillow holds for ``image``'s pixels (RGB is kept as 4 bytes a pixel)."""
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    return image.width * image.height * per_pixel
