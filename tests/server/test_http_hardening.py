"""Issue 13 over a real loopback socket: Host and Origin parsed and compared exactly, no credential
or whole client string in any log line, and connections bounded (count, slow headers, idle)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from multimodal_mcp.config import Config, HttpSettings
from multimodal_mcp.logs import MAX_LOG_CHARS, install
from multimodal_mcp.server.app import build_server, create_services
from multimodal_mcp.server.http import HostOriginGuard, parse_authority, transport_security
from multimodal_mcp.tools.common import Services

from helpers import cpu_only, make_config, text_of
from http_helpers import raw_post, serving

pytestmark = pytest.mark.anyio
REFUSED = (403, 421)  # what a request whose Host or Origin is not allowed gets


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def config(tmp_path: Path, tiny_dir: Path) -> Config:
    return make_config(tmp_path, tiny_dir, tmp_path)


@pytest.fixture
async def url(config: Config) -> AsyncIterator[str]:
    async with serving(config, create_services(config, cpu_only())) as endpoint:
        yield endpoint


# --- item 6: Host and Origin ---------------------------------------------------------------------


async def test_the_issues_host_with_user_info_is_refused_and_plain_loopback_hosts_pass(url: str) -> None:
    port = url.split(":")[2].split("/")[0]
    assert (await raw_post(url, headers={"Host": "localhost:1@attacker.example"})).status_code == 421
    assert (await raw_post(url, headers={"Host": f"localhost:{port}@attacker.example"})).status_code == 421
    assert (await raw_post(url, headers={"Host": "localhost.attacker.example"})).status_code == 421
    assert (await raw_post(url, headers={"Host": f"127.0.0.1:{port}"})).status_code not in REFUSED
    assert (await raw_post(url, headers={"Host": f"LocalHost:{port}"})).status_code not in REFUSED


async def test_origins_are_parsed_and_compared_by_scheme_host_and_port(url: str) -> None:
    port = url.split(":")[2].split("/")[0]
    for bad in (
        f"http://localhost:{port}@attacker.example",
        "http://localhost.attacker.example",
        f"http://localhost:{port}/path",
        "null",
        f"ftp://localhost:{port}",
    ):
        assert (await raw_post(url, headers={"Origin": bad})).status_code == 403, bad
    assert (await raw_post(url, headers={"Origin": f"http://localhost:{port}"})).status_code not in REFUSED


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("localhost:8000", ("localhost", "8000")),
        ("[::1]:80", ("[::1]", "80")),
        ("MCP.example.com", ("mcp.example.com", None)),
        ("localhost:1@attacker.example", None),
        ("localhost:", None),
        ("localhost:70000", None),
        ("local host", None),
        ("[not-v6]:80", None),
    ],
)
def test_host_values_parse_as_an_rfc_3986_authority_or_not_at_all(value: str, parsed: Any) -> None:
    assert parse_authority(value) == parsed


def test_a_configured_host_with_a_port_allows_that_port_only() -> None:
    guard = HostOriginGuard(
        None, transport_security(HttpSettings(allowed_hosts=("mcp.example.com:443",)), "::")
    )
    assert guard.host_allowed("mcp.example.com:443")
    assert not guard.host_allowed("mcp.example.com:4430")
    assert not guard.host_allowed("mcp.example.com")
    assert guard.host_allowed("localhost:8000")  # bound to every interface: loopback names too
    assert not guard.host_allowed("localhost:*")


# --- item 3: nothing untrusted echoed whole; no credential in a log ------------------------------


async def test_a_token_in_the_query_string_is_refused_and_redacted_from_the_access_log(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await raw_post(f"{url}?access_token=query-token-0123456789")
    assert response.status_code not in (200, 202)
    access = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/mcp?<redacted>" in line for line in access), access
    server_side = [
        r.getMessage() for r in caplog.records if not r.name.startswith("httpx")
    ]  # not the client's
    assert not any("query-token-0123456789" in line for line in server_side)


async def test_a_huge_resource_uri_and_argument_name_are_answered_and_logged_by_prefix(
    fake_services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)  # the SDK logs a failed resource read, with its URI, at INFO
    handler = Collect()
    install(handler)
    logging.getLogger().addHandler(handler)
    try:
        async with Client(build_server(fake_services.config, fake_services)) as client:
            for uri in ("image://" + "a" * 5_000_000, "other://" + "b" * 1_000):
                with pytest.raises(MCPError) as info:
                    await client.read_resource(uri)
                assert "Unknown resource" in str(info.value) and len(str(info.value)) < 300
            result = await client.call_tool("list_models", {"x" * 100_000: 1, "y": 2})
            assert result.is_error
            text = text_of(result)
            assert (
                "unknown argument(s) 'xxxxxxxx" in text and "(100000 characters)" in text and len(text) < 300
            )
    finally:
        logging.getLogger().removeHandler(handler)
    assert handler.lines and max(len(line) for line in handler.lines) < MAX_LOG_CHARS + 200
