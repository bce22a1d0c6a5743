"""Fixtures for the third-party Node clients in clients/ (MCP Inspector CLI, TypeScript SDK).

They need Node.js and ``npm ci --prefix clients``. Without them the tests skip, unless
MMCP_REQUIRE_NODE_CLIENTS=1 (set by CI) turns the skip into a failure.
"""

from __future__ import annotations

import os
import shutil

import pytest
from node_clients import CLIENTS


def _unavailable(reason: str) -> None:
    message = f"{reason}; run `npm ci --prefix clients` (Node.js 20+) to run the third-party client tests"
    if os.environ.get("MMCP_REQUIRE_NODE_CLIENTS") == "1":
        pytest.fail(f"MMCP_REQUIRE_NODE_CLIENTS=1 but {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        _unavailable("node is not on PATH")
    assert path is not None
    if not (CLIENTS / "node_modules" / "@modelcontextprotocol").is_dir():
        _unavailable("clients/node_modules is missing")
    return path
