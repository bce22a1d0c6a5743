"""What an HTTP client can hold, bounded: connections, their header and idle time, and sessions.

- **Connections**: at most ``max_connections`` open at once (past it, the oldest connection still
  waiting for a request head is closed, or the new one if every connection is busy),
  and never more than the file-descriptor limit allows less a reserve for the store, models and
  logs (:func:`connection_cap`, after :func:`raise_fd_limit` raised the soft limit to the hard one).
  A connection that has not sent a whole request head within ``header_timeout_seconds`` (an idle
  socket, or one sending its headers a byte at a time) is closed; so is one idle between requests
  for ``idle_timeout_seconds``.
- **Requests in flight**: per session, ``max_requests_per_session``, and one per JSON-RPC id.
- **Sessions**: at most ``max_sessions`` in all and ``max_sessions_per_principal`` for each
  principal (anonymous callers are one principal); a session idle for ``session_idle_seconds``
  ends. A request past a limit gets 503 naming the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from contextvars import ContextVar
from typing import Any

import anyio
import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from multimodal_mcp.config import HttpSettings

logger = logging.getLogger(__name__)

FD_RESERVE = 128
"""Descriptors kept for everything but client connections (store files, model files, logs, pipes)."""


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit where the system allows; returns
    (soft, hard) as they are afterwards. On systems without ``resource`` (Windows), (0, 0)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0, 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            logger.info("could not raise the open-file limit from %d to %d", soft, wanted)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def connection_cap(configured: int, soft_fd_limit: int) -> int:
    """``max_connections``, lowered to leave ``FD_RESERVE`` descriptors free (at least 16)."""
    if soft_fd_limit <= 0:
        return configured
    return max(16, min(configured, soft_fd_limit - FD_RESERVE))


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a deadline for each request head."""

    max_connections: int = 1000
    header_timeout: float = 10.0
    refused: int = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened = self.loop.time()
        self._served = 0
        if len(self.connections) > self.max_connections:
            # At the cap, a connection waiting for a request head (an idle socket, a slow sender)
            # makes way, the oldest that never sent a request first; if every one is busy with a
            # request, the new one is closed. Idle sockets cannot lock out a client that sends.
            waiting = [c for c in self.connections if isinstance(c, BoundedH11Protocol) and c._waiting()]
            type(self).refused += 1
            logger.warning(
                "connections at server.http.max_connections (%d): closed %s",
                self.max_connections,
                "an idle one" if waiting else "the new one",
            )
            victim = min(waiting, key=lambda c: (c._served > 0, c._opened)) if waiting else self
            victim.transport.abort()
            if victim is self:
                return
        self._arm_header_deadline()

    def _waiting(self) -> bool:
        """Whether this connection is waiting for a request head (nothing in progress)."""
        idle = self.cycle is None or self.cycle.response_complete
        return idle and self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def on_response_complete(self) -> None:
        self._served += 1
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()  # the next request's head has the same deadline

    def _arm_header_deadline(self) -> None:
        previous = getattr(self, "_header_deadline", None)
        if previous is not None:
            previous.cancel()
        self._header_deadline = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

    def _header_deadline_passed(self) -> None:
        # IDLE: no whole request head arrived since the deadline was armed (a request in progress is
        # SEND_BODY or DONE; an answered one re-armed the deadline).
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            logger.info("closed a connection that sent no whole request head in %.0f s", self.header_timeout)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        deadline = getattr(self, "_header_deadline", None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(exc)


def uvicorn_config(app: Any, http: HttpSettings, *, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn config the CLI serves with (tests too): the protocol above, with its limits."""
    soft, _ = raise_fd_limit()
    cap = connection_cap(http.max_connections, soft)
    if cap < http.max_connections:
        logger.warning(
            "server.http.max_connections lowered from %d to %d: the open-file limit is %d",
            http.max_connections,
            cap,
            soft,
        )
    protocol = type(
        "Bounded",
        (BoundedH11Protocol,),
        {"max_connections": cap, "header_timeout": http.header_timeout_seconds},
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=http.idle_timeout_seconds,  # type: ignore[arg-type]
        log_config=None,
        server_header=False,
        **kwargs,
    )


# --- sessions per principal -----------------------------------------------------------------------

_refusal: ContextVar[list[str] | None] = ContextVar("multimodal_mcp_session_refusal", default=None)


def limit_sessions(manager: Any, http: HttpSettings) -> None:
    """Cap the SDK session manager's sessions per principal (it caps only the total).

    The SDK has no hook for this: its ``_admit_session`` is wrapped, counting the open sessions
    created with the same credential (``None``: unauthenticated callers, together).
    """
    admit = manager._admit_session
    per_principal = http.max_sessions_per_principal

    def admit_within_limits(requestor: Any) -> Any:
        notes = _refusal.get()
        owners = manager._session_owners
        mine = sum(1 for sid in manager._server_instances if owners.get(sid) == requestor)
        if mine >= per_principal:
            who = (requestor or {}).get("client_id") or "anonymous"
            logger.warning(
                "refused a new session for %s: %d open (server.http.max_sessions_per_principal)",
                str(who)[:64],
                mine,
            )
            if notes is not None:
                notes.append(
                    f"Too many open sessions for this caller: {mine} "
                    "(server.http.max_sessions_per_principal); end one (HTTP DELETE) or let one idle out"
                )
            return None
        transport = admit(requestor)
        if transport is None and notes is not None:
            notes.append(
                f"Too many open sessions on this server: {http.max_sessions} (server.http.max_sessions); "
                "try again later"
            )
        return transport

    manager._admit_session = admit_within_limits


class SessionRefusals:
    """ASGI middleware: a 503 for a refused session says which limit refused it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        notes: list[str] = []
        token = _refusal.set(notes)
        replaced = False

        async def send_named(message: dict[str, Any]) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message.get("status") == 503 and notes:
                replaced = True
                await _json_rpc_error(send, 503, None, -32603, notes[0])
                return
            if replaced:
                return  # the SDK's own body for the refusal is dropped
            await send(message)

        try:
            await self.app(scope, receive, send_named)
        finally:
            _refusal.reset(token)


# --- requests in flight per session ---------------------------------------------------------------

MCP_SESSION = "mcp-session-id"


class InflightRequests:
    """ASGI middleware: in one session, at most ``max_requests_per_session`` requests in flight, and
    never two with one JSON-RPC id (the SDK keeps one reply stream per id: the first was never
    answered, while keep-alive pings kept its client waiting). Either refusal is a JSON-RPC error
    with the request's id and HTTP 409 or 429; the limit is named.
    """

    def __init__(self, app: Any, *, max_requests_per_session: int, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_requests_per_session
        self.max_body = max_body_bytes
        self.inflight: dict[tuple[str, str], set[Any]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        session = headers.get(MCP_SESSION.encode())
        if scope["type"] != "http" or scope.get("method") != "POST" or session is None:
            await self.app(scope, receive, send)
            return
        # Keyed by session and credential: someone who learnt a session id cannot block its ids.
        key = (
            session.decode("latin-1")[:128],
            hashlib.sha256(headers.get(b"authorization", b"")).hexdigest(),
        )
        messages, body = await _read_body(receive, self.max_body)
        request_id = await _request_id(body) if body is not None else None
        replay = _replayer(messages, receive)
        if request_id is None:  # a notification, a response, a batch or too big: the SDK answers it
            await self.app(scope, replay, send)
            return
        ids = self.inflight.setdefault(key, set())
        if request_id in ids or len(ids) >= self.limit:
            duplicate = request_id in ids
            message = (
                f"Invalid Request: a request with id {str(request_id)[:40]!r} is already in flight in this "
                "session; use a new id for each request"
                if duplicate
                else f"Too many requests in flight in this session: {self.limit} "
                "(server.http.max_requests_per_session); wait for one to finish"
            )
            await _json_rpc_error(send, 409 if duplicate else 429, request_id, -32600, message)
            return
        ids.add(request_id)
        try:
            await self.app(scope, replay, send)
        finally:
            ids.discard(request_id)
            if not ids:
                self.inflight.pop(key, None)


async def _read_body(receive: Any, limit: int) -> tuple[list[Any], bytes | None]:
    """The request's messages as received, and its body (None past ``limit``: the body limit answers)."""
    messages: list[Any] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > limit:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


async def _request_id(body: bytes) -> Any:
    """The JSON-RPC id of a request body (None for anything else); big bodies parse off the loop."""
    try:
        value = json.loads(body) if len(body) < 65_536 else await anyio.to_thread.run_sync(json.loads, body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or "method" not in value:
        return None
    request_id = value.get("id")
    if isinstance(request_id, str) or (isinstance(request_id, int) and not isinstance(request_id, bool)):
        return request_id
    return None


def _replayer(messages: list[Any], receive: Any) -> Any:
    pending = list(messages)

    async def replay() -> Any:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _json_rpc_error(send: Any, status: int, request_id: Any, code: int, message: str) -> None:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
