"""Fetching an image from an http(s) URL that an argument names. Off unless ``[server.urls]`` enables it.

The URL was written by a language model that may have read anything, so the fetch is fenced in:

- http and https only, no credentials in the URL, at most ``max_redirects`` redirects;
- every address the host name resolves to is checked (no loopback, private, link-local, CGNAT,
  cloud metadata, multicast, reserved or unspecified addresses, nor IPv4-mapped, 6to4, Teredo or
  NAT64 forms of them), and the connection goes to the checked address itself, never re-resolved:
  the name travels only in the Host header and in TLS SNI (where the certificate is checked);
- every redirect is checked the same way before anything connects to it;
- the body is streamed and cut at ``max_bytes``, and the whole fetch (DNS, connects, redirects,
  body) has one hard deadline, ``timeout_seconds``, so a slow-drip server is cut off at it.

The fetch runs on its own event loop in the calling worker thread; plain stdlib (asyncio streams),
HTTP/1.0 so bodies are never chunked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from multimodal_mcp.config import UrlSettings
from multimodal_mcp.errors import ImageInputError

Resolve = Callable[[str, int], list[str]]
"""Host name and port to the IP addresses (as strings) it resolves to."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_CHARS = 2048
MAX_HEADER_BYTES = 32 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")

URLS_OFF = (
    "fetching URLs is turned off on this server (the default). Download the image yourself and pass it "
    "as base64 or a file path; the server's operator can turn fetching on with '[server.urls] "
    "enabled = true' in the config file."
)


def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4, Teredo, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's (obfuscation removed by the stdlib)
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 0xFFFF:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why the server must not connect to ``ip``, or None when it is an ordinary public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None:
            reason = blocked_reason(inner)
            return f"it embeds {inner}, which {reason}" if reason else None
    checks = (
        (ip.is_unspecified, "is unspecified"),
        (ip.is_loopback, "is a loopback address"),
        (ip.is_link_local, "is link-local (cloud metadata services live there)"),
        (
            isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT,
            "is in the shared CGNAT range 100.64.0.0/10",
        ),
        (ip.is_multicast, "is multicast"),
        (ip.is_private, "is a private address"),
        (ip.is_reserved, "is reserved"),
        (not ip.is_global, "is not a public address"),
    )
    return next((reason for blocked, reason in checks if blocked), None)


@dataclass(frozen=True)
class _Target:
    url: str
    https: bool
    host: str  # ASCII (IDNA) host name or IP literal, no brackets
    port: int
    path: str  # path and query, as sent

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.https else 80
        return name if self.port == default else f"{name}:{self.port}"


def _parse(url: str) -> _Target:
    if len(url) > MAX_URL_CHARS:
        raise ImageInputError(f"the URL is {len(url)} characters; the limit is {MAX_URL_CHARS}")
    if any(c in url for c in "\x00\r\n\t ") or not url.isprintable():
        raise ImageInputError("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ImageInputError(f"the URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageInputError(f"only http and https URLs are fetched, not {scheme}://")
    if parts.username is not None or parts.password is not None:
        raise ImageInputError("URLs with credentials (user:password@) are not fetched")
    if not host:
        raise ImageInputError("the URL has no host name")
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise ImageInputError("the URL's host name is not a valid domain name") from None
    https = scheme == "https"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(url, https, ascii_host.rstrip("."), port or (443 if https else 80), path)


class UrlFetcher:
    """Downloads image bytes from http(s) URLs within :class:`UrlSettings`. Blocking; run it in a worker
    thread (it runs its own event loop there, with one hard deadline for the whole fetch)."""

    def __init__(self, settings: UrlSettings, *, resolve: Resolve = system_resolve) -> None:
        self.settings = settings
        self.resolve = resolve
        self.allowed = tuple(ipaddress.ip_network(net) for net in settings.allow_networks)

    def fetch(self, url: str) -> bytes:
        """The body of ``url`` (following checked redirects).

        Raises:
            ImageInputError: fetching is off, the URL or an address is refused, a limit was hit, or
                the server failed; the message says which.
        """
        if not self.settings.enabled:
            raise ImageInputError(URLS_OFF)
        _parse(url)  # refuse malformed URLs before starting a loop
        return asyncio.run(self._fetch_before_deadline(url))

    async def _fetch_before_deadline(self, url: str) -> bytes:
        limit = self.settings.timeout_seconds
        try:
            async with asyncio.timeout(limit):
                return await self._follow(url)
        except TimeoutError:
            raise ImageInputError(
                f"fetching the URL took longer than this server's limit of {limit:g} s "
                f"(server.urls.timeout_seconds); download the image yourself and pass it as base64"
            ) from None

    async def _follow(self, url: str) -> bytes:
        for _ in range(self.settings.max_redirects + 1):
            target = _parse(url)
            address = await self._checked_address(target)
            status, headers, reader, writer = await self._request(target, address)
            try:
                if status in _REDIRECTS:
                    location = headers.get("location")
                    if not location:
                        raise ImageInputError(f"the server answered a redirect ({status}) with no Location")
                    url = urljoin(url, location.strip())
                    continue
                if status != 200:
                    raise ImageInputError(f"the server answered HTTP {status}, not 200 with an image")
                return await self._body(headers, reader)
            finally:
                writer.close()
        raise ImageInputError(
            f"the URL redirected more than {self.settings.max_redirects} times (server.urls.max_redirects)"
        )

    def _permitted(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (inner := _embedded_ipv4(ip)) is not None:
            candidates.append(inner)
        return any(c in net for c in candidates for net in self.allowed if c.version == net.version)

    async def _checked_address(self, target: _Target) -> str:
        """The address to connect to: every address the host resolves to must pass the check."""
        literal = _ip_literal(target.host)
        if literal is not None:
            addresses = [literal]
        else:
            names = await _resolve_in_thread(self.resolve, target.host, target.port)
            parsed = [_ip_literal(name.split("%", 1)[0]) for name in names]
            addresses = [ip for ip in parsed if ip is not None]
            if not addresses or len(addresses) != len(parsed):
                raise ImageInputError(f"the host {target.host} resolved to no usable addresses")
        for ip in addresses:
            reason = blocked_reason(ip)
            if reason and not self._permitted(ip):
                raise ImageInputError(
                    f"refused to fetch {target.host}: its address {ip} {reason}. Only public internet "
                    "addresses are fetched."
                )
        return str(addresses[0])

    async def _request(
        self, target: _Target, address: str
    ) -> tuple[int, dict[str, str], asyncio.StreamReader, asyncio.StreamWriter]:
        context = ssl.create_default_context() if target.https else None
        try:
            # Connect to the checked address; the name goes only into SNI (and the certificate check).
            reader, writer = await asyncio.open_connection(
                address,
                target.port,
                ssl=context,
                server_hostname=target.host if context else None,
                limit=MAX_HEADER_BYTES,
            )
        except ssl.SSLError as exc:
            raise ImageInputError(f"TLS with {target.host} failed ({exc.reason or 'certificate'})") from None
        except OSError as exc:
            raise ImageInputError(
                f"could not connect to {target.host} ({exc.strerror or type(exc).__name__})"
            ) from None
        try:
            request = (
                f"GET {target.path} HTTP/1.0\r\nHost: {target.host_header}\r\n"
                "User-Agent: multimodal-mcp\r\nAccept: image/png, image/jpeg, image/webp, image/gif\r\n"
                "Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
            )
            writer.write(request.encode("ascii"))
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status, headers = _parse_head(head)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, UnicodeError, ValueError):
            writer.close()
            raise ImageInputError(f"{target.host} sent a malformed or oversized HTTP response") from None
        except OSError as exc:
            writer.close()
            raise ImageInputError(f"the connection to {target.host} failed ({type(exc).__name__})") from None
        return status, headers, reader, writer

    async def _body(self, headers: dict[str, str], reader: asyncio.StreamReader) -> bytes:
        cap = self.settings.max_bytes
        too_big = (
            f"the image at the URL is larger than this server's limit of {cap} bytes (server.urls.max_bytes)"
        )
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ImageInputError(
                f"the server sent a {encoding}-encoded body; only plain bodies are accepted"
            )
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ImageInputError("the server sent an invalid Content-Length")
            if int(length) > cap:
                raise ImageInputError(f"{too_big}; it declares {int(length)} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = await reader.read(64 * 1024)
            except OSError as exc:
                raise ImageInputError(f"the download failed ({type(exc).__name__})") from None
            if not chunk:
                break
            size += len(chunk)
            if size > cap:
                raise ImageInputError(too_big)
            chunks.append(chunk)
        body = b"".join(chunks)
        if length is not None and len(body) != int(length):
            raise ImageInputError("the download was cut short (fewer bytes than Content-Length)")
        return body


def _ip_literal(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ValueError("not an HTTP/1.x response")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError("malformed header")
        key = name.strip().lower()
        if key in headers and key == "content-length" and headers[key] != value.strip():
            raise ValueError("conflicting Content-Length headers")
        headers[key] = value.strip()
    return int(rest[:3]), headers


async def _resolve_in_thread(resolve: Resolve, host: str, port: int) -> list[str]:
    """DNS in a daemon thread, so the fetch's deadline also bounds a resolver that hangs."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[str]] = loop.create_future()

    def settle(result: list[str] | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or [])

    def work() -> None:
        result: list[str] | None = None
        error: BaseException | None = None
        try:
            result = list(resolve(host, port))
        except OSError:
            error = ImageInputError(f"the host name {host} could not be resolved")
        except Exception as exc:  # a resolver bug is still the fetch failing, not the server
            error = exc
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is gone, the deadline passed
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="mmcp-dns", daemon=True).start()
    return await future
