"""Who is calling: the principal that owns the images and jobs a call makes.

The MCP surface sets the principal for each request (from the verified bearer token over HTTP, or the
single local user over stdio); the store and the job manager read it to decide what a caller may see.
Tools never handle it. A principal is a name only: it never holds the caller's token, so nothing
below the MCP surface can pass a client's credentials on.

Names are namespaced so that no token can impersonate a built-in principal: ``local`` (stdio),
``anonymous`` (HTTP without auth), ``user:<name>`` (static tokens), ``oauth:<issuer>#<subject>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

LOCAL = "local"
"""The one user of a stdio server (and of tests and the demo)."""

ANONYMOUS = "anonymous"
"""Every caller of an HTTP server that has no auth configured."""

SINGLE_USER = frozenset({LOCAL, ANONYMOUS})
"""Principals that may read records written before images had owners."""

_current: ContextVar[str] = ContextVar("multimodal_mcp_principal", default=LOCAL)


def current_principal() -> str:
    """The principal of the call being served (``local`` outside any request)."""
    return _current.get()


@contextmanager
def acting_as(principal: str) -> Iterator[None]:
    """Run the block (and the tasks and worker threads it starts) as ``principal``."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


def static_principal(name: str) -> str:
    return f"user:{name}"


def oauth_principal(issuer: str | None, subject: str) -> str:
    return f"oauth:{issuer or ''}#{subject}"
