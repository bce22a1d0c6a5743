"""The HTTP transport's protections: who may bind where, Host/Origin checks, body limit, bearer auth.

Part of the MCP surface (it builds on the SDK's ``TokenVerifier``, ``AuthSettings`` and
``TransportSecuritySettings``). A verified token becomes a principal *name*
(:mod:`multimodal_mcp.principals`); the token itself goes no further than the verifier, so no tool,
backend or log line ever sees it.

PyJWT (with cryptography) and the connection limits (uvicorn's h11 protocol) are imported where they
are used, so a stdio server, which needs neither, does not pay for them at its start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import anyio
import httpx2
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.responses import Response

from multimodal_mcp.config import AuthConfig, Config, ConfigError, HttpSettings, OAuthSettings
from multimodal_mcp.logs import redact_access_log
from multimodal_mcp.principals import ANONYMOUS, LOCAL, oauth_principal, static_principal

if TYPE_CHECKING:
    import jwt

logger = logging.getLogger(__name__)

PRINCIPAL_CLAIM = "multimodal_mcp_principal"
"""Where our verifiers put the principal name in ``AccessToken.claims``."""

NOT_KEPT = "(not kept)"
"""What ``AccessToken.token`` holds: the SDK model wants a token, we keep none."""

_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


TOKENS_ENV = "MULTIMODAL_MCP_TOKENS"


def tokens_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``MULTIMODAL_MCP_TOKENS="alice:<token>,bob:<token>"`` -> {principal: token}.

    Raises:
        ConfigError: an entry is not ``principal:token``, or a principal appears twice.
    """
    tokens: dict[str, str] = {}
    for entry in environ.get(TOKENS_ENV, "").split(","):
        if not entry.strip():
            continue
        principal, sep, token = entry.strip().partition(":")
        if not sep or not principal or not token:
            raise ConfigError(
                f"{TOKENS_ENV}: each entry must be 'principal:token' (entries are comma-separated)"
            )
        if principal in tokens:
            raise ConfigError(f"{TOKENS_ENV}: principal {principal[:64]!r} appears twice")
        tokens[principal] = token
    return tokens


def check_binding(host: str, auth: AuthConfig, *, insecure_no_auth: bool) -> None:
    """Refuse to serve beyond loopback without auth unless explicitly told to.

    Raises:
        ConfigError: binding ``host`` would expose an unauthenticated server.
    """
    if is_loopback(host) or auth.configured:
        return
    if not insecure_no_auth:
        raise ConfigError(
            f"refusing to serve HTTP on {host} without authentication: anyone who can reach the port could "
            "run models and read every image. Configure [server.http.auth] (static tokens or oauth, see "
            "README 'Security'), bind 127.0.0.1 (the default), or pass --insecure-no-auth if a trusted "
            "proxy in front of this server authenticates callers."
        )
    logger.warning(
        "INSECURE: serving HTTP on %s with NO authentication (--insecure-no-auth). Anyone who can reach this "
        "port can run models and read every image the server makes.",
        host,
    )


def _split_host(value: str) -> tuple[str, str | None]:
    """'name', 'name:port', '[v6]' or '[v6]:port' -> (host, port or None)."""
    if value.startswith("["):
        end = value.find("]")
        host, rest = value[: end + 1], value[end + 1 :]
        return host, rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, port
    if value.count(":") > 1:  # a bare IPv6 address
        return f"[{value}]", None
    return value, None


def transport_security(http: HttpSettings, host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection: the Host and Origin headers a request may carry.

    Allowed: the loopback names (when bound to loopback or every interface), the bind address itself,
    and the configured ``allowed_hosts`` / ``allowed_origins``.
    """
    names: list[str] = []
    if is_loopback(host) or host in ("0.0.0.0", "::", ""):
        names.extend(_LOOPBACK_NAMES)
    if host not in ("0.0.0.0", "::", "") and _split_host(host)[0] not in names:
        names.append(_split_host(host)[0])  # e.g. 127.0.0.2: loopback, but not a loopback name
    hosts: list[str] = []
    origins: list[str] = []
    for entry in [*names, *http.allowed_hosts]:
        name, port = _split_host(entry)
        if port is None:
            hosts += [name, f"{name}:*"]
            origins += [f"http://{name}", f"https://{name}", f"http://{name}:*", f"https://{name}:*"]
        else:
            hosts.append(f"{name}:{port}")
            origins += [f"http://{name}:{port}", f"https://{name}:{port}"]
    origins.extend(o.rstrip("/") for o in http.allowed_origins)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(dict.fromkeys(hosts)),
        allowed_origins=list(dict.fromkeys(origins)),
    )


_AUTHORITY = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}|\*))?"
)
_ORIGIN = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#@]+)")

Authority = tuple[str, str | None]
"""(host, port): the host lower-cased (IPv6 in brackets), the port as digits, '*' or None."""


def parse_authority(value: str) -> Authority | None:
    """``host[:port]`` parsed as RFC 3986 allows in a Host header; None for anything else (user
    info, a path, spaces, an empty or out-of-range port, a malformed IPv6 address)."""
    match = _AUTHORITY.fullmatch(value)
    if match is None:
        return None
    port = match["port"]
    if port is not None and port != "*" and not 0 < int(port) < 65536:
        return None
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            return None
        return f"[{match['v6'].lower()}]", port
    return match["name"].lower().rstrip("."), port


def parse_origin(value: str) -> tuple[str, Authority] | None:
    """``scheme://host[:port]`` (an Origin header: nothing after the authority); None otherwise."""
    match = _ORIGIN.fullmatch(value)
    authority = parse_authority(match["authority"]) if match is not None else None
    if match is None or authority is None:
        return None
    return match["scheme"].lower(), authority


def _matches(found: Authority, allowed: Authority) -> bool:
    return found[0] == allowed[0] and ((allowed[1] == "*" and found[1] is not None) or found[1] == allowed[1])


class HostOriginGuard:
    """ASGI middleware: DNS-rebinding protection with Host and Origin parsed, then compared exactly.

    The SDK's check compares by prefix (``Host: localhost:1@attacker.example`` passed as
    ``localhost:*``); here a header that does not parse is refused, and a parsed one must equal an
    allowed (host, port), or (scheme, host, port) for an Origin; ``*`` as port allows any port.
    """

    def __init__(self, app: Any, settings: TransportSecuritySettings) -> None:
        self.app = app
        self.hosts = [a for a in map(parse_authority, settings.allowed_hosts) if a is not None]
        self.origins = [o for o in map(parse_origin, settings.allowed_origins) if o is not None]

    def host_allowed(self, value: str | None) -> bool:
        found = parse_authority(value) if value else None
        if found is None or found[1] == "*":
            return False
        return any(_matches(found, allowed) for allowed in self.hosts)

    def origin_allowed(self, value: str | None) -> bool:
        if value is None:
            return True  # same-origin requests and non-browser clients send none
        found = parse_origin(value)
        if found is None or found[1][1] == "*":
            return False
        return any(found[0] == scheme and _matches(found[1], allowed) for scheme, allowed in self.origins)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            hosts = headers.getlist("host")
            origins = headers.getlist("origin")
            refusal = None
            if len(hosts) != 1 or not self.host_allowed(hosts[0]):
                refusal = Response("Invalid Host header", status_code=421)
            elif len(origins) > 1 or not self.origin_allowed(origins[0] if origins else None):
                refusal = Response("Invalid Origin header", status_code=403)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def principal_of_request(request: Any) -> str:
    """The principal of an MCP request: ``local`` without HTTP, ``anonymous`` over HTTP without auth,
    else the one our verifier derived from the bearer token."""
    if request is None:
        return LOCAL
    user = getattr(request, "scope", {}).get("user")
    if isinstance(user, AuthenticatedUser):
        claims = user.access_token.claims or {}
        principal = claims.get(PRINCIPAL_CLAIM)
        if isinstance(principal, str):
            return principal
        token = user.access_token
        return oauth_principal(str(claims.get("iss") or ""), token.subject or token.client_id)
    return ANONYMOUS


class StaticTokenVerifier:
    """Bearer tokens from the config, compared by SHA-256 in constant time."""

    def __init__(self, auth: AuthConfig, scopes: list[str]) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), t.principal) for t in auth.tokens]
        self._scopes = scopes

    async def verify_token(self, token: str) -> AccessToken | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: str | None = None
        for stored, principal in self._tokens:  # no early exit: time does not depend on the position
            if hmac.compare_digest(digest, stored):
                found = principal
        if found is None:
            return None
        return AccessToken(
            token=NOT_KEPT,
            client_id=found,
            subject=found,
            scopes=list(self._scopes),
            claims={"iss": "static", PRINCIPAL_CLAIM: static_principal(found)},
        )


class OAuthVerifier:
    """Access tokens from an authorization server: JWTs (key or JWKS) or RFC 7662 introspection.

    Every token must be issued by ``issuer`` for ``audience`` and be unexpired; rejections are logged
    by reason, never with the token.
    """

    def __init__(self, settings: OAuthSettings, *, http_client: httpx2.AsyncClient | None = None) -> None:
        import jwt

        self.settings = settings
        self._key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_client: jwt.PyJWKClient | None = None
        self._http = http_client
        if settings.public_key_file is not None:
            self._key = _read(settings.public_key_file)
        elif settings.jwks_file is not None:
            try:
                self._jwks = jwt.PyJWKSet.from_json(_read(settings.jwks_file))
            except (jwt.PyJWTError, ValueError) as exc:
                raise ConfigError(f"oauth.jwks_file {settings.jwks_file} is not a JWK set: {exc}") from None
        elif settings.jwks_url is not None:
            self._jwks_client = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, timeout=10)

    async def verify_token(self, token: str) -> AccessToken | None:
        import jwt

        try:
            if self.settings.introspection_url is not None:
                claims = await self._introspect(token)
            else:
                claims = await self._decode(token)
        except (jwt.PyJWTError, httpx2.HTTPError, ValueError, KeyError) as exc:
            logger.info("rejected an OAuth bearer token: %s", type(exc).__name__)
            return None
        subject = claims.get(self.settings.principal_claim)
        if not isinstance(subject, str) or not subject:
            logger.info("rejected an OAuth bearer token: no %r claim", self.settings.principal_claim)
            return None
        scopes = claims.get("scope", claims.get("scp", []))
        if isinstance(scopes, str):
            scopes = scopes.split()
        exp = claims.get("exp")
        return AccessToken(
            token=NOT_KEPT,
            client_id=str(claims.get("client_id") or claims.get("azp") or subject),
            scopes=[str(s) for s in scopes],
            expires_at=int(exp) if isinstance(exp, int | float) else None,
            resource=self.settings.expected_audience,
            subject=subject,
            claims={
                "iss": self.settings.issuer,
                PRINCIPAL_CLAIM: oauth_principal(self.settings.issuer, subject),
            },
        )

    async def _decode(self, token: str) -> dict[str, Any]:
        import jwt

        key: Any = self._key
        if self._jwks is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            matching = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
            if not matching:
                raise jwt.InvalidKeyError("no key in the JWK set matches the token's kid")
            key = matching[0]
        elif self._jwks_client is not None:
            client = self._jwks_client
            key = await anyio.to_thread.run_sync(client.get_signing_key_from_jwt, token)
        decoded: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=list(self.settings.algorithms),
            audience=self.settings.expected_audience,
            issuer=self.settings.issuer,
            leeway=self.settings.leeway_seconds,
            options={"require": ["exp", "iss", "aud"]},
        )
        return decoded

    async def _introspect(self, token: str) -> dict[str, Any]:
        settings = self.settings
        assert settings.introspection_url is not None
        headers = {"Accept": "application/json"}
        if settings.introspection_client_id:
            # RFC 6749 2.3.1: client id and secret form-encoded, then HTTP Basic.
            secret = settings.introspection_client_secret or ""
            pair = f"{quote(settings.introspection_client_id)}:{quote(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        client = self._http or httpx2.AsyncClient(timeout=10)
        try:
            response = await client.post(settings.introspection_url, data={"token": token}, headers=headers)
        finally:
            if self._http is None:
                await client.aclose()
        response.raise_for_status()
        claims = response.json()
        if not isinstance(claims, dict) or claims.get("active") is not True:
            raise ValueError("inactive")
        if claims.get("iss") not in (None, settings.issuer):
            raise ValueError("issuer")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if settings.expected_audience not in audiences:
            raise ValueError("audience")
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp + settings.leeway_seconds < time.time():
            raise ValueError("expired")
        return claims


class CombinedVerifier:
    """Static tokens first, then OAuth."""

    def __init__(self, verifiers: list[TokenVerifier]) -> None:
        self.verifiers = verifiers

    async def verify_token(self, token: str) -> AccessToken | None:
        for verifier in self.verifiers:
            found = await verifier.verify_token(token)
            if found is not None:
                return found
        return None


def auth_for(config: Config) -> tuple[AuthSettings | None, TokenVerifier | None]:
    """The SDK's auth settings and our verifier, or (None, None) when no auth is configured."""
    auth = config.server.http.auth
    if not auth.configured:
        return None, None
    oauth = auth.oauth
    scopes = list(oauth.required_scopes) if oauth else []
    verifiers: list[TokenVerifier] = []
    if auth.tokens:
        verifiers.append(StaticTokenVerifier(auth, scopes))
    if oauth is not None:
        verifiers.append(OAuthVerifier(oauth))
    settings = AuthSettings(
        # Only advertised when OAuth is on; static tokens need no authorization server.
        issuer_url=oauth.issuer if oauth else "http://127.0.0.1",  # type: ignore[arg-type]
        resource_server_url=oauth.resource_url if oauth else None,  # type: ignore[arg-type]
        required_scopes=scopes or None,
        validate_token_resource=False,  # OAuthVerifier checks the audience itself
    )
    return settings, CombinedVerifier(verifiers)


def http_app(server: Any, config: Config, *, host: str, stateless: bool = False) -> Starlette:
    """The streamable HTTP ASGI app, with our Host/Origin allow-list and body limit.

    ``stateless``: no MCP sessions (the SDK's stateless HTTP), so that any of several front
    replicas can answer any request. Protocol 2026-07-28 requests are self-contained either way;
    clients of earlier revisions still connect, but the server cannot send them a request in the
    middle of a call (its answer could reach another replica), so they are never asked to confirm
    a paid call (``server.spending.default_without_elicitation`` applies to them).
    """
    from multimodal_mcp.server.connections import InflightRequests, SessionRefusals, limit_sessions

    http = config.server.http
    app: Starlette = server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=stateless,
        # The SDK's own Host/Origin check matches by prefix; HostOriginGuard parses and compares.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        max_request_body_size=http.max_request_bytes,
        max_sessions=http.max_sessions,
        session_idle_timeout=http.session_idle_seconds,
        host=host,
    )
    limit_sessions(server.session_manager, http)
    app.add_middleware(SessionRefusals)
    app.add_middleware(
        InflightRequests,
        max_requests_per_session=http.max_requests_per_session,
        max_body_bytes=http.max_request_bytes,
    )
    app.add_middleware(HostOriginGuard, settings=transport_security(http, host))
    redact_access_log()  # a token sent as ?access_token= must not reach the access log
    return app


def _read(path: Any) -> str:
    try:
        return str(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
