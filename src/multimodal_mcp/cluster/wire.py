"""What crosses the process boundary between the front and a replica: plain-data frames.

A replica's ``call`` streams tuples:

- ``("progress", done, total, message)``: the pool's progress (queue position, denoising steps);
- ``("alive",)``: at once when a long call (one that reports progress) arrives, then a heartbeat every
  few seconds while the call waits or works, so the front notices a replica that went silent (a lost
  node) instead of waiting forever;
- ``("result", value, replica)``: the handle method's return value (plain data: PIL images, numbers,
  text) and the id of the Serve replica that ran it (None outside Serve), for the front's debug log;
- ``("error", kind, message)``: a curated error (``kind`` names a class of
  :mod:`multimodal_mcp.errors`) or, for anything else, ``kind`` "internal" and a message carrying
  only the id the replica logged the details under. No traceback, process id or address crosses.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from multimodal_mcp import errors
from multimodal_mcp.errors import BackendError, MultimodalError

logger = logging.getLogger(__name__)

Frame = tuple[Any, ...]

METHODS: dict[str, bool] = {
    "generate": True,
    "answer": True,
    "complete": True,
    "p_yes": False,
    "detect": False,
    "embed_images": False,
    "classify": False,
    "similarities": False,
    "depth_map": False,
    "screen": False,
}
"""The handle methods a replica runs, and whether each takes a ``progress`` callback."""

_KINDS: dict[str, type[MultimodalError]] = {
    cls.__name__: cls
    for cls in (
        errors.InvalidArgument,
        errors.ImageInputError,
        errors.UnknownModel,
        errors.UnsupportedOperation,
        errors.NotFound,
        errors.Busy,
        errors.BackendError,
        errors.ProviderError,
    )
}


def error_frame(exc: BaseException, *, model: str, method: str) -> Frame:
    """The frame for an exception raised in a replica: curated ones verbatim, others by log id."""
    if isinstance(exc, MultimodalError) and type(exc).__name__ in _KINDS:
        return ("error", type(exc).__name__, str(exc))
    error_id = secrets.token_hex(4)
    logger.error("%s.%s failed in its replica (error id %s)", model, method, error_id, exc_info=exc)
    return ("error", "internal", f"model {model!r} failed in its replica (error id {error_id})")


def raise_error(kind: str, message: str) -> None:
    """Raise the front-side error for an error frame (an unknown kind is a BackendError)."""
    raise _KINDS.get(kind, BackendError)(message)
