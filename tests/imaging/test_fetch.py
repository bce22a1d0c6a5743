"""Fetching images from URLs: off by default; when on, every address and redirect is checked, and
size and time are capped. A loopback test server is reached only through ``allow_networks``."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from multimodal_mcp.config import Limits, UrlSettings
from multimodal_mcp.errors import ImageInputError
from multimodal_mcp.imaging import fetch as fetch_module
from multimodal_mcp.imaging.fetch import UrlFetcher, blocked_reason
from multimodal_mcp.imaging.inputs import ImageResolver
from multimodal_mcp.imaging.store import ImageStore

from helpers import b64_png, call_error, call_ok, make_config, photo

PNG = __import__("base64").b64decode(b64_png(photo("astronaut", 32)))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    hosts: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        _Handler.hosts.append(self.headers.get("Host", ""))
        path, _, query = self.path.partition("?")
        if path == "/cat.png":
            self._send(200, PNG, {"Content-Length": str(len(PNG)), "Content-Type": "image/png"})
        elif path == "/redirect":
            self._send(302, headers={"Location": query.removeprefix("to=")})
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            self._send(302, headers={"Location": f"/chain/{left - 1}" if left > 1 else "/cat.png"})
        elif path == "/big":
            self._send(200, b"\x00" * 300_000, {"Content-Length": "300000"})
        elif path == "/big-no-length":
            self.send_response(200)
            self.end_headers()
            for _ in range(30):  # 300 KB in 10 KB pieces, no Content-Length
                self.wfile.write(b"\x00" * 10_000)
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "10000")
            self.end_headers()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # one byte every 50 ms: no single read ever waits long
                self.wfile.write(PNG[:1])
                self.wfile.flush()
                time.sleep(0.05)
        elif path == "/text":
            body = b"<html>not an image</html>"
            self._send(200, body, {"Content-Length": str(len(body)), "Content-Type": "image/png"})
        elif path == "/gzip":
            self._send(200, b"\x1f\x8b", {"Content-Encoding": "gzip", "Content-Length": "2"})
        else:
            self._send(404)


@pytest.fixture
def http_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _Handler.hosts = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _fetcher(**settings: Any) -> UrlFetcher:
    resolve = settings.pop("resolve", fetch_module.system_resolve)
    values: dict[str, Any] = {"enabled": True, "allow_networks": ("127.0.0.1/32",), **settings}
    return UrlFetcher(UrlSettings(**values), resolve=resolve)


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every (host, server_hostname) the fetcher opens a connection to."""
    seen: list[tuple[str, Any]] = []
    real = asyncio.open_connection

    async def spy(host: str, port: int, **kwargs: Any) -> Any:
        seen.append((host, kwargs.get("server_hostname")))
        return await real(host, port, **kwargs)

    monkeypatch.setattr(fetch_module.asyncio, "open_connection", spy)
    return seen


def test_urls_are_off_by_default_and_the_error_says_how_to_enable_them(tmp_path: Path) -> None:
    resolver = ImageResolver(ImageStore(tmp_path / "s"), (), Limits())
    with pytest.raises(ImageInputError, match=r"turned off.*\[server.urls\] enabled = true"):
        resolver.resolve("https://example.com/cat.png")
    assert UrlSettings().enabled is False and UrlSettings().allow_networks == ()


def test_an_image_url_is_fetched_and_stored_like_other_inputs(tmp_path: Path, http_server: str) -> None:
    resolver = ImageResolver(ImageStore(tmp_path / "s"), (), Limits(), fetcher=_fetcher())
    resolved = resolver.resolve(f"{http_server}/cat.png")
    assert resolved.image.size == (32, 32) and resolved.record.source == "url"
    assert resolved.pending is not None
    resolver.store.commit(resolved.pending)
    assert resolver.resolve(resolved.record.uri).image.tobytes() == resolved.image.tobytes()


def test_loopback_is_refused_unless_its_network_is_explicitly_allowed(http_server: str) -> None:
    with pytest.raises(ImageInputError, match=r"127.0.0.1 is a loopback address"):
        _fetcher(allow_networks=()).fetch(f"{http_server}/cat.png")
    with pytest.raises(ImageInputError, match="loopback address"):
        _fetcher(allow_networks=()).fetch(http_server.replace("127.0.0.1", "localhost") + "/cat.png")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://10.0.0.1/x.png", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:127.0.0.2]/x.png", "embeds 127.0.0.2, which is a loopback address"),
        ("http://127.0.0.2/x.png", "loopback"),  # the allowed /32 does not open the rest of 127/8
        ("http://[fd00:ec2::254]/latest/meta-data/", "private"),
        ("http://100.64.0.1/x.png", "CGNAT"),
        ("http://[64:ff9b::a00:1]/x.png", "embeds 10.0.0.1"),  # NAT64
        ("http://[2002:a9fe:a9fe::]/x.png", "embeds 169.254.169.254"),  # 6to4
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://[::1]/x.png", "loopback"),
        ("http://2130706434/x.png", "127.0.0.2 is a loopback"),  # decimal, resolved by the system
        ("http://0x7f000002/x.png", "127.0.0.2 is a loopback"),  # hex
        ("http://127.2/x.png", "127.0.0.2 is a loopback"),  # short form
        ("http://0177.0.0.2/x.png", "127.0.0.2 is a loopback"),  # octal
    ],
)
def test_a_redirect_to_a_forbidden_address_is_refused_before_connecting(
    http_server: str, connects: list[tuple[str, Any]], target: str, reason: str
) -> None:
    with pytest.raises(ImageInputError, match=reason):
        _fetcher().fetch(f"{http_server}/redirect?to={target}")
    assert [host for host, _ in connects] == ["127.0.0.1"]  # only the first hop ever connected


def test_redirects_are_followed_up_to_the_limit_and_no_further(http_server: str) -> None:
    assert _fetcher(max_redirects=5).fetch(f"{http_server}/chain/5") == PNG
    with pytest.raises(ImageInputError, match="redirected more than 5 times"):
        _fetcher(max_redirects=5).fetch(f"{http_server}/chain/6")
    with pytest.raises(ImageInputError, match="redirected more than 0 times"):
        _fetcher(max_redirects=0).fetch(f"{http_server}/chain/1")


def test_bodies_over_the_byte_cap_are_refused_with_or_without_content_length(http_server: str) -> None:
    fetcher = _fetcher(max_bytes=100_000)
    with pytest.raises(ImageInputError, match=r"limit of 100000 bytes.*declares 300000"):
        fetcher.fetch(f"{http_server}/big")
    with pytest.raises(ImageInputError, match="limit of 100000 bytes"):
        fetcher.fetch(f"{http_server}/big-no-length")


def test_a_slow_drip_server_is_cut_off_at_the_total_time_cap(http_server: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageInputError, match="longer than this server's limit of 1 s"):
        _fetcher(timeout_seconds=1).fetch(f"{http_server}/drip")
    assert time.monotonic() - started < 2.5


def test_a_body_that_is_not_an_allowed_image_is_an_input_error(tmp_path: Path, http_server: str) -> None:
    resolver = ImageResolver(ImageStore(tmp_path / "s"), (), Limits(), fetcher=_fetcher())
    with pytest.raises(ImageInputError, match="not an image in an accepted format"):
        resolver.resolve(f"{http_server}/text")
    with pytest.raises(ImageInputError, match="gzip-encoded body"):
        resolver.resolve(f"{http_server}/gzip")
    with pytest.raises(ImageInputError, match="HTTP 404"):
        resolver.resolve(f"{http_server}/nothing")


def test_a_hostname_resolving_to_a_private_address_is_refused(connects: list[tuple[str, Any]]) -> None:
    def private(host: str, port: int) -> list[str]:
        return ["10.1.2.3"]

    def mixed(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "127.0.0.1"]  # one bad address is enough to refuse

    with pytest.raises(ImageInputError, match=r"images.example: its address 10.1.2.3 is a private"):
        _fetcher(resolve=private).fetch("http://images.example/cat.png")
    with pytest.raises(ImageInputError, match=r"127.0.0.1 is a loopback"):
        _fetcher(resolve=mixed, allow_networks=()).fetch("https://images.example/cat.png")
    assert connects == []


def test_the_connection_goes_to_the_checked_address_and_the_name_only_to_host_and_sni(
    http_server: str, connects: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = int(http_server.rsplit(":", 1)[1])
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])  # a rebinding resolver: a second lookup would differ
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    assert _fetcher(resolve=rebinding).fetch(f"http://images.example:{port}/cat.png") == PNG
    assert calls == ["images.example"] and connects == [("127.0.0.1", None)]
    assert _Handler.hosts == [f"images.example:{port}"]

    # https: TLS goes to the same checked address with the name as SNI (no TLS server here, so it fails).
    connects.clear()
    with pytest.raises(ImageInputError, match=r"TLS|connect|connection"):
        _fetcher(resolve=lambda h, p: ["127.0.0.1"]).fetch(f"https://images.example:{port}/cat.png")
    assert connects == [("127.0.0.1", "images.example")]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/cat.png", "not read by this server"),
        ("gopher://example.com/", "not read by this server"),
        ("http://user:pass@example.com/cat.png", "credentials"),
        ("http://example.com/" + "a" * 3000, "limit is 2048"),
        ("http://exa mple.com/cat.png", "spaces or control characters"),
        ("http:///cat.png", "no host name"),
    ],
)
def test_only_plain_http_and_https_urls_are_fetched(tmp_path: Path, url: str, message: str) -> None:
    resolver = ImageResolver(ImageStore(tmp_path / "s"), (), Limits(), fetcher=_fetcher())
    with pytest.raises(ImageInputError, match=message):
        resolver.resolve(url)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",
        "64:ff9b::7f00:1",
        "64:ff9b:1::a9fe:a9fe",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo for 127.0.0.1
        "192.0.2.1",
        "198.18.0.1",  # documentation, benchmarking
    ],
)
def test_non_public_addresses_in_every_form_are_blocked(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is not None


def test_public_addresses_pass_the_check() -> None:
    for address in ("93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"):
        assert blocked_reason(ipaddress.ip_address(address)) is None, address


def test_allow_networks_must_be_networks() -> None:
    with pytest.raises(ValueError, match="not a network"):
        UrlSettings(allow_networks=("localhost",))


async def test_a_tool_reads_an_image_url_when_the_config_enables_urls(
    tmp_path: Path, tiny_dir: Path, allowed_root: Path, http_server: str
) -> None:
    from mcp import Client

    from multimodal_mcp.server.app import build_server, create_services

    from helpers import cpu_only

    urls = {"enabled": True, "allow_networks": ["127.0.0.1/32"], "timeout_seconds": 10}
    config = make_config(tmp_path, tiny_dir, allowed_root, urls=urls)
    services = create_services(config, devices=cpu_only())
    async with Client(build_server(config, services)) as client:
        result = await call_ok(
            client,
            "compare_images",
            {"image_a": f"{http_server}/cat.png", "image_b": b64_png(photo("astronaut", 32))},
        )
        assert result["ssim"] > 0.99
        error = await call_error(
            client,
            "compare_images",
            {"image_a": f"{http_server}/redirect?to=http://10.0.0.1/", "image_b": "x"},
        )
        assert "10.0.0.1 is a private address" in error
