"""Staged inputs: an image whose pixels need a conversion is stored at once as the client's own
file, and converted in the background.

A JPEG tagged with an ICC profile other than sRGB (phones tag their photos Display P3) or coded in
CMYK, a PNG or WebP with such a profile (a Mac's screenshot) and a 16-bit PNG decode to the server's
8-bit sRGB pixels only through a conversion, so their own bytes cannot be what the store keeps for
good (:mod:`.compact`: stored pixels are sRGB and no profile is kept). Converting and encoding 12
megapixels losslessly takes seconds; a call that only reads the photo (``clip_classify``) needs a
fraction of a second. So the store first writes the *staged* form: the client's file stripped of
everything but what makes the picture, its ICC profile and a JPEG's orientation
(:func:`.compact.kept_form` with ``staged``), with a record marked ``staged``. The id is the content
address of those bytes and never changes. The call answers; a background thread of the store then
decodes the staged file whole (or takes the pixels the call decoded, still cached), encodes them
losslessly (:func:`.compact.encode_lossless`), writes that file, switches the record to it with a
conditional write and removes the staged file.

A staged id can be read at every moment, by every process sharing the store: ``open`` decodes the
staged file through the same conversion as the upload (:func:`.codec.decode_image`), so its pixels
are those the conversion stores; ``read_bytes``, ``path`` and ``file_size`` (what a client is sent)
first wait for the conversion, or do it themselves when no thread of theirs is on it. The id stays
marked pending in the index from the staged write until the conversion is in place, so a server
killed meanwhile leaves a pending row, and the next process to open the store converts it then
(:meth:`.store.ImageStore.settle_pending`); on an object store (whose index is this process's
memory) a staged image left by a killed server is converted when its bytes are first read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING

from PIL import Image

from multimodal_mcp.errors import Busy
from multimodal_mcp.imaging.admission import DecodeBudget, return_free_memory
from multimodal_mcp.imaging.codec import apply_orientation, decode_image, read_orientation
from multimodal_mcp.imaging.compact import EXTENSIONS, MIME_TYPES, PIL_FORMATS, encode_lossless, mime_of
from multimodal_mcp.imaging.records import WRITE_ATTEMPTS, ImageRecord, image_key, parse_record, record_key
from multimodal_mcp.imaging.storage import Conflict

if TYPE_CHECKING:
    from multimodal_mcp.imaging.store import ImageStore

logger = logging.getLogger(__name__)

DEFER_SECONDS = 5.0
"""How long a conversion waits for the calls running their models (:meth:`Staging.deferring`) before
it starts anyway (it then runs at the lowest CPU priority)."""
SETTLE_SECONDS = 0.2
"""How long a conversion also waits after the last such call's model work ended: the call still
sends its answer (its JSON, the pipe or socket, the client reading it), which a conversion starting
at once slowed by 10-20 ms on 2 cores even at the lowest priority."""
_OWN_BUDGET = DecodeBudget(2**62)
"""Conversions are not admitted against the server's decode budget: a call may wait for one (to send
a staged image), so a conversion waiting for that call's memory would never end. They run one at a
time instead (one worker thread); the call that sent the image no longer holds its pixels then. At
its peak a conversion takes about 16 bytes a pixel to decode and 36 to encode (libwebp's lossless
encoder: 408 MiB for 12 megapixels of noise)."""


def decode_stored(record: ImageRecord, data: bytes) -> Image.Image:
    """``data``, the file of ``record`` (read after it), decoded as the store returns it: in the
    record's mode, a JPEG's EXIF orientation applied (see :mod:`.compact`), a staged file converted.
    The format is the bytes' own: a staged record read before its conversion may come with the
    converted file."""
    if record.staged:  # (the converted file, if it came, decodes to the same pixels through it)
        return decode_staged(record, data)
    fmt = next((f for f, mime in MIME_TYPES.items() if mime == mime_of(data)), record.format)
    with Image.open(io.BytesIO(data), formats=[PIL_FORMATS[fmt]]) as img:
        img.load()
        upright = apply_orientation(img, read_orientation(img) or 1) if fmt == "jpeg" else img
        return upright.convert(record.mode or img.mode)


def decode_staged(record: ImageRecord, data: bytes, budget: DecodeBudget | None = None) -> Image.Image:
    """The pixels of a staged image: decoded and converted as the upload was (ICC profile or CMYK to
    sRGB, 16 bits to 8, a JPEG's EXIF orientation applied), in the record's mode.

    Raises:
        ImageInputError: the bytes no longer decode (a store edited by hand).
    """
    pixels = max(1, record.width * record.height)
    decoded = decode_image(data, max_pixels=pixels, max_aspect=float("inf"), budget=budget)
    return decoded.image.convert(record.mode or decoded.image.mode)


def _lowest_priority() -> None:
    """Run the calling thread at the lowest CPU priority (nice 19), so that a conversion takes only
    what the calls leave: it starts while the call that sent the photo is still running its model.
    Linux only, where a thread has its own nice value; elsewhere the thread keeps the process's."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class Staging:
    """The background conversions of one store's staged inputs (one worker thread, started at the
    first). Every method is safe to call from any thread."""

    def __init__(self, store: ImageStore) -> None:
        self._store = weakref.ref(store)  # no cycle: a store dropped is closed at once
        self._lock = threading.Lock()
        self._running: dict[str, Future[None]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._deferring = 0
        self._last_ended = -math.inf  # time.monotonic() when the last deferring block ended
        self._quiet = threading.Condition()

    def schedule(self, image_id: str) -> None:
        """Convert ``image_id`` in the background, unless that is under way already."""
        with self._lock:
            if image_id in self._running:
                return
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="store-staged", initializer=_lowest_priority
                )
            self._running[image_id] = self._executor.submit(self._background, image_id)

    def resume(self, record: ImageRecord) -> None:
        """After a killed writer's pending write of ``record`` was found finished (at opening): the
        file of another format a conversion cut short left is removed, and a staged input is marked
        pending for this process and converted in the background."""
        store = self._store()
        assert store is not None
        for other in EXTENSIONS:
            if other != record.format:
                store.backend.delete(image_key(record.id, other))
        if record.staged:
            store.index.mark_pending(record.id, record.format)
            self.schedule(record.id)

    def resuming(self, entries: Iterable[tuple[ImageRecord, int]]) -> Iterator[tuple[ImageRecord, int]]:
        """``entries`` (a store's scan, as its index is rebuilt), each staged input found marked
        pending for this process (part of the rebuild's transaction) and scheduled for conversion."""
        for record, size in entries:
            if record.staged:
                store = self._store()
                assert store is not None
                store.index.mark_pending(record.id, record.format)
                self.schedule(record.id)
            yield record, size

    def settle(self, image_id: str) -> None:
        """Return once ``image_id`` is no longer staged: converted now, in the calling thread and at
        its priority, unless that is done already. The background conversion is not waited for: it
        may be queued behind others, and runs at the lowest priority (a queued one is cancelled; one
        under way finds the work done when it comes to write, and leaves it).

        Raises:
            Busy: the record kept changing under the conditional writes.
            ImageInputError: the staged bytes do not decode.
        """
        with self._lock:
            queued = self._running.get(image_id)
            if queued is not None and queued.cancel():
                del self._running[image_id]
        self.convert(image_id)  # nothing to do when it is no longer staged

    def drain(self, timeout: float | None = None) -> bool:
        """Wait for the conversions under way (at shutdown); False when ``timeout`` seconds passed
        first (those left are finished by the next process to open the store)."""
        with self._lock:
            running = list(self._running.values())
        _, left = wait(running, timeout=timeout)
        return not left

    def close(self) -> None:
        """Cancel the conversions not started (the one under way finishes): at shutdown, after
        :meth:`drain`; the next process to open the store converts those left (they stay pending)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Conversions do not start while the block runs (a call's model work, which one would slow
        on a shared CPU: it is scheduled while the call that sent the photo is still running its
        model), nor for :data:`SETTLE_SECONDS` after it (the call answering), unless the wait runs
        past :data:`DEFER_SECONDS`."""
        with self._quiet:
            self._deferring += 1
        try:
            yield
        finally:
            with self._quiet:
                self._deferring -= 1
                self._last_ended = time.monotonic()
                self._quiet.notify_all()

    def _wait_for_quiet(self) -> None:
        deadline = time.monotonic() + DEFER_SECONDS
        with self._quiet:
            while (now := time.monotonic()) < deadline:
                settled = self._last_ended + SETTLE_SECONDS
                if self._deferring == 0 and now >= settled:
                    return
                self._quiet.wait(min(deadline, settled if self._deferring == 0 else deadline) - now)

    def _background(self, image_id: str) -> None:
        self._wait_for_quiet()
        try:
            self.convert(image_id)
        except Exception:  # logged; the staged image stays readable and is converted when next read
            logger.exception("image store: converting staged image %s failed", image_id)
        finally:
            return_free_memory()  # a whole photo's pixels and encoder buffers, back to the system
            with self._lock:
                self._running.pop(image_id, None)

    def convert(self, image_id: str) -> None:
        """Convert a staged image now (nothing when it is not staged or gone): encode its pixels
        losslessly, write them, switch the record to them (conditional write), remove the JPEG."""
        store = self._store()
        if store is None:
            return
        record = parse_record(store.backend.read(record_key(image_id)))
        if record is None or not record.staged:
            with store.write_lock:  # converted by another process: no write of ours is left pending
                store.index.clear_pending(image_id)
            return
        staged_key = image_key(image_id, record.format)
        image = store.cached(image_id)
        if image is None:
            data = store.backend.read(staged_key)
            if data is None:
                return  # removed, or converted by another process meanwhile
            image = decode_staged(record, data, _OWN_BUDGET)
        encoded = encode_lossless(image)
        digest = hashlib.sha256(encoded.data).hexdigest()
        converted_key = image_key(image_id, encoded.format)
        with store.write_lock:  # retention does not remove it between the writes below
            store.index.mark_pending(image_id, encoded.format)
            store.backend.put(converted_key, encoded.data)
            for _ in range(WRITE_ATTEMPTS):
                found = store.backend.get(record_key(image_id))
                current = parse_record(found.data if found is not None else None)
                if found is None or current is None or not current.staged:
                    # Removed meanwhile, or converted by another process: nothing of ours stays.
                    if current is None or current.format != encoded.format:
                        store.backend.delete(converted_key)
                    store.index.clear_pending(image_id)
                    return
                change = {"format": encoded.format, "sha256": digest, "staged": False}
                updated = current.model_copy(update=change)
                text = updated.dump()
                try:
                    store.backend.put(record_key(image_id), text, mode=found.version)
                except Conflict:
                    continue  # an owner added meanwhile: apply the change to that record
                break
            else:
                store.index.clear_pending(image_id)
                raise Busy(f"image {image_id} was changed by other writers {WRITE_ATTEMPTS} times")
            if converted_key != staged_key:
                store.backend.delete(staged_key)
            store.index.add(updated, len(text) + len(encoded.data))  # clears the pending mark
        store.after_write()  # the store grew: its retention may remove old images now
        logger.debug("image store: staged image %s converted (%d bytes)", image_id, len(encoded.data))
