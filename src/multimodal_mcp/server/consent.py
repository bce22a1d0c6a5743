"""Spending consent: asking the client's user to confirm a paid call, over MCP elicitation.

Before protocol revision 2026-07-28 the server asks mid-call (``elicitation/create``); from it on,
the question goes back as an ``InputRequiredResult`` round and the client calls again with the answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from typing import Any

import anyio
from mcp.server.elicitation import AcceptedElicitation, render_elicitation_schema
from mcp.server.mcpserver import Context
from mcp.shared.exceptions import MCPError
from mcp.types import ElicitRequest, ElicitRequestFormParams, ElicitResult, InputRequiredResult
from mcp_types.version import is_version_at_least
from pydantic import BaseModel, Field

from multimodal_mcp.errors import ConfirmationPending, SpendingRefused
from multimodal_mcp.tools.common import SpendingDecision, SpendingRequest

logger = logging.getLogger(__name__)


class SpendingConsent(BaseModel):
    """The form a user answers to confirm a paid call."""

    approve: bool = Field(default=True, title="Allow this paid call")


_INPUT_REQUIRED_VERSION = "2026-07-28"
"""From this protocol revision on, a tool call asks its client through an InputRequiredResult round
(the client answers and calls again) instead of a server-to-client request in the middle of the call."""


class SpendingApprover:
    """Asks the client's user to confirm the paid calls of one tool call, over MCP elicitation.

    Protocol revisions before 2026-07-28 get an ``elicitation/create`` request while the call waits.
    Later ones cannot be asked mid-call: the question goes back as an ``InputRequiredResult`` (the
    tool stops with :class:`ConfirmationPending` before doing any work), and the client calls again
    with the answer, which the tool's next run finds here. Answers of earlier rounds ride
    ``request_state``; each answer is keyed by a digest of the question it answers, so it counts only
    for that exact question. A client that declared no elicitation support is never asked.
    """

    def __init__(self, ctx: Context, tool: str) -> None:
        self.ctx = ctx
        self.tool = tool
        version = ctx.protocol_version
        self.rounds = version is not None and is_version_at_least(version, _INPUT_REQUIRED_VERSION)
        self.decided: dict[str, SpendingDecision] = self._decode(ctx.request_state) if self.rounds else {}
        self.pending: dict[str, ElicitRequest] = {}
        self.asking = 0
        self.idle = anyio.Event()
        self.idle.set()
        self.closed = False  # the call has returned (a job handle): nobody waits for an answer

    def _can_ask(self) -> bool:
        capabilities = self.ctx.client_capabilities
        elicitation = capabilities.elicitation if capabilities is not None else None
        if elicitation is None or (elicitation.form is None and elicitation.url is not None):
            return False  # no elicitation, or URL mode only
        return self.rounds or self.ctx.session.can_send_request

    def message(self, request: SpendingRequest) -> str:
        return (
            f"{self.tool} wants to make a paid call to {request.model} ({request.backend}): {request.what}. "
            "Allow it?"
        )

    async def __call__(self, request: SpendingRequest) -> SpendingDecision | None:
        if not self._can_ask():
            return None
        if self.closed:
            raise SpendingRefused(
                f"{self.tool} reached the paid call to {request.model} only after it had returned a job "
                "handle, too late to ask the user; nothing was spent. Call it again."
            )
        message = self.message(request)
        key = "spend-" + hashlib.sha256(message.encode()).hexdigest()[:16]
        if not self.rounds:
            return await self._ask_now(message)
        if key in self.decided:
            return self.decided[key]
        answer = (self.ctx.input_responses or {}).get(key)
        if isinstance(answer, ElicitResult):
            self.decided[key] = _decision(answer.action, answer.content)
            return self.decided[key]
        self.pending[key] = ElicitRequest(
            params=ElicitRequestFormParams(
                message=message, requested_schema=render_elicitation_schema(SpendingConsent)
            )
        )
        raise ConfirmationPending(f"waiting for the user to confirm the paid call to {request.model}")

    async def _ask_now(self, message: str) -> SpendingDecision:
        self.asking += 1
        self.idle = anyio.Event()
        try:
            result = await self.ctx.elicit(message, SpendingConsent)
        except (ValueError, MCPError) as exc:  # a malformed answer, or the client failed to ask
            logger.info("%s: the spending confirmation failed (%s); treating it as cancelled", self.tool, exc)
            return "cancel"
        finally:
            self.asking -= 1
            if not self.asking:
                self.idle.set()
        if isinstance(result, AcceptedElicitation):
            return _decision("accept", result.data.model_dump())
        return result.action

    def input_required(self) -> InputRequiredResult | None:
        """The questions to send back, when the tool stopped to ask."""
        if not self.pending:
            return None
        state = base64.urlsafe_b64encode(json.dumps(self.decided).encode()).decode()
        return InputRequiredResult(input_requests=dict(self.pending), request_state=state)

    @staticmethod
    def _decode(state: str | None) -> dict[str, SpendingDecision]:
        if not state:
            return {}
        try:
            data = json.loads(base64.urlsafe_b64decode(state.encode()))
        except (ValueError, binascii.Error):
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            k: v
            for k, v in data.items()
            if isinstance(k, str) and k.startswith("spend-") and v in ("accept", "decline", "cancel")
        }


def _decision(action: str, content: dict[str, Any] | None) -> SpendingDecision:
    """Accepting the form with approve = false is a decline."""
    if action == "accept":
        return "accept" if (content or {}).get("approve", True) is True else "decline"
    return "decline" if action == "decline" else "cancel"
