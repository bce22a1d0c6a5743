"""Resolving an image argument (``image://<id>``, a data URI, bare base64, a file path, or an http(s)
URL when the server enables URLs).

Resolving writes nothing: an image that arrived as bytes comes back with its stored form prepared
(:class:`~.store.PendingImage`), and the tool writes it with :meth:`.store.ImageStore.commit` once its
checks have passed, so the inputs of a refused call are never stored.

What is read costs what the use needs (issue 20): bytes are hashed before any decode, and bytes the
store has seen are read back, never decoded, encoded or written again; a data URI or base64 string
is first decoded from base64 (SIMD, about 0.5 ms for 6 MB: less than hashing its text would cost),
then its bytes are hashed like any other; a use that needs fewer pixels (``min_side``) gets a JPEG
decoded at reduced scale (at the side the model's processor takes: 1/8 of a 12-megapixel photo for
CLIP), other images are reduced by a power of two, and the reduced picture of a stored image is kept
in memory (:data:`REDUCED_CACHE_BYTES`), so ``image://`` ids and repeated data URIs of a
12-megapixel photo cost a copy of a 500x375 picture rather than a 12-megapixel decode. While one core
decodes new bytes, another strips and hashes the form the store will keep of them (when they are
kept: see :mod:`.compact`; an image whose pixels need a colour or bit-depth conversion is kept
*staged* and converted by the store in the background, so the call never waits for a lossless
encoding: see :mod:`.staging`).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from multimodal_mcp.config import Limits, UrlSettings
from multimodal_mcp.errors import ImageInputError, NotFound
from multimodal_mcp.imaging.admission import DecodeBudget
from multimodal_mcp.imaging.codec import (
    DecodedImage,
    decode_base64_payload,
    decode_image,
    looks_like_data_uri,
)
from multimodal_mcp.imaging.compact import Encoded, NotStorable, kept_form
from multimodal_mcp.imaging.fetch import URLS_OFF, UrlFetcher, is_url
from multimodal_mcp.imaging.normalize import picture
from multimodal_mcp.imaging.records import id_of_key
from multimodal_mcp.imaging.store import URI_SCHEME, ImageRecord, ImageStore, PendingImage

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_BASE64ISH = re.compile(r"^[A-Za-z0-9+/_=\s-]+$")

HOW_TO_PASS = (
    "Pass an image as image://<id> (from an earlier result), a data: URI, bare base64, "
    "or an absolute file path under an allowed directory."
)
MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255
REDUCED_CACHE_BYTES = 64 * 2**20
"""Reduced pictures of stored images (decoded for a use's ``min_side``) kept in memory, in bytes."""


@dataclass(frozen=True)
class ResolvedImage:
    """An image argument: its record (id, size) and decoded pixels (RGB or RGBA)."""

    record: ImageRecord
    image: Image.Image
    pending: PendingImage | None = None
    """The write that stores it: not done yet for bytes a client sent (commit it once the call goes
    ahead); None for an ``image://`` reference, which is stored already."""
    notes: tuple[str, ...] = ()
    """What reading it changed (bit depth scaled, colour profile converted; see :mod:`.normalize`)."""


class ImageResolver:
    """Turns untrusted image arguments into stored images. Blocking; run it in a worker thread."""

    def __init__(
        self,
        store: ImageStore,
        allowed_roots: tuple[Path, ...],
        limits: Limits,
        *,
        urls: UrlSettings | None = None,
        fetcher: UrlFetcher | None = None,
    ) -> None:
        self.store = store
        self.allowed_roots = tuple(root.resolve() for root in allowed_roots)
        self.limits = limits
        self.fetcher = fetcher or UrlFetcher(urls or UrlSettings())
        self.decode_budget = DecodeBudget(limits.decode_memory_mib * 2**20)
        self._reduced = _PictureCache(REDUCED_CACHE_BYTES)
        self._helpers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="input-kept-form")

    def resolve(self, value: str, *, argument: str = "image", min_side: int | None = None) -> ResolvedImage:
        """Resolve one image argument: decode it and prepare its stored form, writing nothing.

        ``min_side``: the use needs at most this many pixels on the short side, so ``image`` may be
        smaller than the stored image (a large JPEG decoded at reduced scale, when its own bytes are
        what the store keeps); ``record`` always has the stored size.

        Raises:
            ImageInputError: the argument names the limit or the accepted forms.
            NotFound: an ``image://`` id the store does not have.
        """
        try:
            return self._resolve(value.strip(), min_side)
        except (ImageInputError, NotFound) as exc:
            raise type(exc)(f"{argument}: {exc}") from exc

    def _resolve(self, value: str, min_side: int | None) -> ResolvedImage:
        if not value:
            raise ImageInputError(f"the image argument is empty. {HOW_TO_PASS}")
        if value.startswith(URI_SCHEME):
            image_id = value[len(URI_SCHEME) :].strip("/")
            record = self.store.record(image_id)
            notes = tuple(record.notes)  # what reading it changed when it was sent
            if not self._reducible(record, min_side):
                return ResolvedImage(record, self.store.open(image_id), notes=notes)
            picture = self._for_use(record, min_side, lambda: self.store.read_bytes(image_id, staged=True)[0])
            return ResolvedImage(record, picture, notes=notes)
        if looks_like_data_uri(value):
            return self._from_text(value, "data", min_side)
        if is_url(value):
            if not self.fetcher.settings.enabled:
                raise ImageInputError(URLS_OFF)
            return self._from_bytes(self.fetcher.fetch(value), "url", min_side)
        if _SCHEME.match(value):
            raise ImageInputError(
                f"{value.split('://', 1)[0][:20]}:// URLs are not read by this server (only http and https, "
                "and only when enabled). Pass the image as base64, image://<id> or an absolute file path."
            )
        if _looks_like_base64(value):
            return self._from_text(value, "base64", min_side)
        return self._from_path(value, min_side)

    def _from_text(self, value: str, source: str, min_side: int | None) -> ResolvedImage:
        """A data URI or bare base64: its base64 decoded, then read as bytes (recognised by their
        hash when stored before: then never decoded as an image, encoded or written again)."""
        raw = decode_base64_payload(value, max_bytes=self.limits.max_input_bytes)
        return self._from_bytes(raw, source, min_side)

    def _from_bytes(self, raw: bytes, source: str, min_side: int | None = None) -> ResolvedImage:
        digest = hashlib.sha256(raw).hexdigest()
        known = self._known(digest, source, min_side)
        if known is not None:
            return known
        kept: list[Future[Encoded | None]] = []

        def strip_meanwhile(source_format: str, orientation: int, keeps_original: bool, staged: bool) -> None:
            # The bytes the store keeps are stripped and hashed on another core while this one decodes.
            if keeps_original or staged:
                kept.append(
                    self._helpers.submit(kept_form, raw, source_format, orientation, digest, staged=staged)
                )

        decoded = self._decode(raw, min_side, on_header=strip_meanwhile)
        try:
            pending = self.store.prepare_input(
                decoded, raw=raw, source=source, raw_sha256=digest, kept=kept[0].result() if kept else None
            )
        except NotStorable:  # reduced, but its own bytes cannot be kept: store the full pixels
            decoded = self._decode(raw, None)
            pending = self.store.prepare_input(decoded, raw=raw, source=source, raw_sha256=digest)
        picture = decoded.image
        if min_side is not None and self._reducible(pending.record, min_side):
            if not decoded.reduced:  # decoded whole: reduced as a later read of its id will be
                picture = _reduce(picture, min_side)
            self._reduced.put((pending.record.id, min_side), picture)
        return ResolvedImage(pending.record, picture, pending, decoded.notes)

    def _known(self, digest: str, source: str, min_side: int | None) -> ResolvedImage | None:
        """Bytes stored before (by the SHA-256 of what the client sent): their stored form, decoded
        (within the same limits, at the scale the use needs) unless it is cached; nothing is encoded
        or written again. None when the store does not have them."""
        known = self.store.prepare_known(digest, source=source)
        if known is None or known.record.width * known.record.height > self.limits.max_input_pixels:
            return None
        record = known.record
        if self._reducible(record, min_side):
            image = self._for_use(record, min_side, lambda: known.data, known.image)
        else:
            image = known.image if known.image is not None else self._decode(known.data, None).image
        return ResolvedImage(record, image, known, tuple(record.notes))

    def _reducible(self, record: ImageRecord, min_side: int | None) -> bool:
        return min_side is not None and min(record.width, record.height) >= 2 * min_side

    def _for_use(
        self,
        record: ImageRecord,
        min_side: int | None,
        stored_jpeg: Callable[[], bytes | None],
        full: Image.Image | None = None,
    ) -> Image.Image:
        """The picture of a stored image a use needing ``min_side`` pixels gets: a stored JPEG
        decoded at reduced scale (the pixels the first call got from the same bytes), else the
        whole image reduced by a power of two; kept in memory for the next call."""
        assert min_side is not None
        key = (record.id, min_side)
        cached = self._reduced.get(key)
        if cached is not None:
            return cached
        data = stored_jpeg() if record.format == "jpeg" else None
        if data is not None:
            decoded = self._decode(data, min_side)
            # (A staged JPEG converted meanwhile comes back as its lossless file, decoded whole.)
            picture = decoded.image if decoded.reduced else _reduce(decoded.image, min_side)
        else:
            picture = _reduce(full if full is not None else self.store.open(record.id), min_side)
        self._reduced.put(key, picture)
        return picture

    def _decode(
        self,
        raw: bytes,
        min_side: int | None,
        on_header: Callable[[str, int, bool, bool], None] | None = None,
    ) -> DecodedImage:
        return decode_image(
            raw,
            max_pixels=self.limits.max_input_pixels,
            max_aspect=self.limits.max_input_aspect,
            min_side=min_side,
            budget=self.decode_budget,
            on_header=on_header,
        )

    def _from_path(self, value: str, min_side: int | None) -> ResolvedImage:
        path = self._checked_path(value)
        shown = value[:200]
        try:
            # O_NOFOLLOW: a last component swapped for a symlink after the check is not followed;
            # O_NONBLOCK: a FIFO swapped in is not waited on (it then fails the regular-file check).
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise ImageInputError(f"cannot open {shown!r}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageInputError(f"{shown!r} is not a regular file")
            if info.st_size > self.limits.max_input_bytes:
                raise ImageInputError(
                    f"the file is {info.st_size} bytes; the limit is {self.limits.max_input_bytes} bytes"
                )
            try:
                raw = file.read(self.limits.max_input_bytes + 1)  # it may have grown since fstat
            except OSError as exc:
                raise ImageInputError(f"cannot read {shown!r}: {exc.strerror}") from None
        if len(raw) > self.limits.max_input_bytes:
            raise ImageInputError(f"the file is over the limit of {self.limits.max_input_bytes} bytes")
        return self._from_bytes(raw, "path", min_side)

    def _stored_id(self, resolved: Path) -> str | None:
        """The id of the stored image whose file ``resolved`` names (judged by its name alone: nothing
        is read), or None."""
        root = self.store.root
        if root is None or not resolved.is_relative_to(root.resolve()):
            return None
        found = id_of_key(resolved.name)
        return found[0] if found is not None and found[1] != "json" else None

    def _checked_path(self, value: str) -> Path:
        """The fully resolved path (symlinks and '..' resolved) if it lies under an allowed root."""
        shown = value[:200]
        if "\x00" in value:
            raise ImageInputError("the file path contains a NUL byte")
        if len(value) > MAX_PATH_CHARS:
            raise ImageInputError(
                f"the value is {len(value)} characters: too long for a path (limit {MAX_PATH_CHARS}) "
                "and not base64"
            )
        if value.startswith("~"):
            raise ImageInputError(f"'~' is not expanded; pass the absolute path. {HOW_TO_PASS}")
        if "\\" in value:
            raise ImageInputError(
                f"{shown!r} contains a backslash; pass a POSIX absolute path with '/' separators"
            )
        path = Path(value)
        if not path.is_absolute():
            raise ImageInputError(f"{shown!r} is neither an absolute file path nor base64. {HOW_TO_PASS}")
        if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in path.parts):
            raise ImageInputError(f"a name in the path is longer than {MAX_NAME_BYTES} bytes")
        if not self.allowed_roots:
            raise ImageInputError(
                "reading files is disabled on this server (no allowed roots are configured). "
                "Pass the image as base64 or image://<id> instead."
            )
        try:
            # Symlinks and '..' resolved first; the root check comes before any existence check, so
            # errors do not tell whether a file outside the roots exists.
            resolved = path.resolve(strict=False)
        except (OSError, RuntimeError) as exc:
            raise ImageInputError(f"cannot resolve the path {shown!r}") from exc
        if not any(resolved.is_relative_to(root) for root in self.allowed_roots):
            roots = ", ".join(str(r) for r in self.allowed_roots)
            stored = self._stored_id(resolved)
            instead = f"Pass image://{stored} instead" if stored else "Pass the image as base64 instead."
            raise ImageInputError(
                f"the path {shown!r} is outside the directories this server may read ({roots}). {instead}"
                + (" (the path of a stored image, as delivery='path' gives it)." if stored else "")
            )
        if not resolved.exists():
            raise ImageInputError(f"no such file: {shown}")
        if not resolved.is_file():
            raise ImageInputError(f"{shown!r} is not a regular file")
        return resolved


class _PictureCache:
    """Decoded pictures by (image id, short side), least recently used evicted past ``budget`` bytes;
    ``get`` and ``put`` copy, so callers may modify what they hold."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._items: OrderedDict[tuple[str, int], tuple[Image.Image, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> Image.Image | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
        return hit[0].copy()

    def put(self, key: tuple[str, int], image: Image.Image) -> None:
        size = image.width * image.height * len(image.getbands())
        if size > self._budget // 4:
            return
        copy = image.copy()
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += size - (old[1] if old else 0)
            self._items[key] = (copy, size)
            while self._bytes > self._budget:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted


def _reduce(whole: Image.Image, min_side: int) -> Image.Image:
    """The picture of ``whole`` (transparency over white, what the model sees: see
    :func:`~.normalize.picture`) reduced by the largest power of two up to 8 that keeps both sides at
    least ``min_side`` (box filter: each pixel the mean of a block, as a JPEG decoded at that scale).
    Flattened first, so that no colour hidden under transparent pixels is averaged into the picture."""
    factor = 2
    while factor < 8 and min(whole.size) // (factor * 2) >= min_side:
        factor *= 2
    return picture(whole).reduce(factor)


def _looks_like_base64(value: str) -> bool:
    # JPEG base64 starts with "/9j/", so a leading slash alone does not make a path; a real path
    # almost always has a '.' or a character outside the base64 alphabet.
    if _BASE64ISH.match(value) is None:
        return False
    if not value.startswith("/") or value.startswith("/9j/"):  # "/9j/": a JPEG's first bytes in base64
        return True
    compact = "".join(value.split())
    return len(compact) >= 64 and len(compact) % 4 == 0
