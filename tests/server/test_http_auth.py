"""Token verification (static, JWT, introspection), binding rules and Host/Origin allow-lists."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

from multimodal_mcp import cli
from multimodal_mcp.config import (
    AuthConfig,
    ConfigError,
    HttpSettings,
    OAuthSettings,
    StaticToken,
    load_config,
)
from multimodal_mcp.principals import ANONYMOUS, LOCAL
from multimodal_mcp.server.app import create_services
from multimodal_mcp.server.http import (
    NOT_KEPT,
    OAuthVerifier,
    StaticTokenVerifier,
    check_binding,
    principal_of_request,
    transport_security,
)

from helpers import call_ok, cpu_only, make_config
from http_helpers import http_client, raw_post, serving

ISSUER = "https://login.example.com"
RESOURCE = "https://mcp.example.com/mcp"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def public_key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "issuer.pem"
    path.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


def sign(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": RESOURCE, "sub": "carol", "exp": now + 300, "iat": now, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256")


class _Request:
    def __init__(self, user: object) -> None:
        self.scope = {"user": user}


async def test_static_tokens_map_to_principals_and_the_access_token_keeps_no_secret() -> None:
    auth = AuthConfig(
        tokens=(
            StaticToken.model_validate({"principal": "alice", "token": "a" * 24}),
            StaticToken.model_validate({"principal": "bob", "sha256": hashlib.sha256(b"b" * 24).hexdigest()}),
        )
    )
    verifier = StaticTokenVerifier(auth, [])
    alice = await verifier.verify_token("a" * 24)
    bob = await verifier.verify_token("b" * 24)
    assert alice is not None and bob is not None
    assert await verifier.verify_token("a" * 23) is None and await verifier.verify_token("") is None
    assert alice.token == NOT_KEPT and "a" * 24 not in alice.model_dump_json()
    assert principal_of_request(_Request(AuthenticatedUser(alice))) == "user:alice"
    assert principal_of_request(_Request(AuthenticatedUser(bob))) == "user:bob"
    assert principal_of_request(_Request(None)) == ANONYMOUS
    assert principal_of_request(None) == LOCAL
    assert "a" * 24 not in repr(auth) and "a" * 24 not in auth.model_dump_json()


def test_a_short_or_repeated_static_token_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        StaticToken.model_validate({"principal": "alice", "token": "short"})
    with pytest.raises(ValueError, match="each team member needs their own"):
        AuthConfig.model_validate(
            {"tokens": [{"principal": "a", "token": "x" * 20}, {"principal": "b", "token": "x" * 20}]}
        )


async def test_jwts_are_checked_for_signature_issuer_audience_and_expiry(
    rsa_key: rsa.RSAPrivateKey, public_key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = OAuthVerifier(
        OAuthSettings(issuer=ISSUER, resource_url=RESOURCE, public_key_file=public_key_file)
    )
    good = await verifier.verify_token(sign(rsa_key, scope="images"))
    assert good is not None and good.subject == "carol" and good.scopes == ["images"]
    assert principal_of_request(_Request(AuthenticatedUser(good))) == f"oauth:{ISSUER}#carol"
    assert good.token == NOT_KEPT
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    caplog.set_level(logging.INFO)
    bad = [
        sign(rsa_key, aud="https://other.example.com/mcp"),
        sign(rsa_key, iss="https://evil.example.com"),
        sign(rsa_key, exp=int(time.time()) - 3600),
        sign(rsa_key, aud=None),
        sign(other_key),
        sign(rsa_key, sub=None),
        "not.a.jwt",
    ]
    for token in bad:
        assert await verifier.verify_token(token) is None
        assert token not in caplog.text


async def test_a_jwks_file_selects_the_key_by_kid(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]}))
    verifier = OAuthVerifier(
        OAuthSettings(issuer=ISSUER, resource_url=RESOURCE, jwks_file=tmp_path / "jwks.json")
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "dan", "exp": now + 60}
    assert (
        await verifier.verify_token(jwt.encode(claims, rsa_key, "RS256", headers={"kid": "k1"})) is not None
    )
    assert await verifier.verify_token(jwt.encode(claims, rsa_key, "RS256", headers={"kid": "k2"})) is None


async def test_introspection_accepts_only_active_tokens_for_this_audience() -> None:
    seen: list[httpx2.Request] = []
    answers = {
        "good": {"active": True, "iss": ISSUER, "aud": [RESOURCE], "sub": "erin", "scope": "a b"},
        "inactive": {"active": False},
        "elsewhere": {"active": True, "iss": ISSUER, "aud": "https://other/mcp", "sub": "erin"},
        "expired": {"active": True, "aud": RESOURCE, "sub": "erin", "exp": time.time() - 3600},
    }

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        token = dict(x.split("=") for x in request.content.decode().split("&"))["token"]
        return httpx2.Response(200, json=answers[token])

    settings = OAuthSettings(
        issuer=ISSUER,
        resource_url=RESOURCE,
        introspection_url="https://login.example.com/introspect",
        introspection_client_id="mcp-server",
        introspection_client_secret="s3cret",
    )
    verifier = OAuthVerifier(
        settings, http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    )
    good = await verifier.verify_token("good")
    assert good is not None and good.subject == "erin" and good.scopes == ["a", "b"]
    for token in ("inactive", "elsewhere", "expired"):
        assert await verifier.verify_token(token) is None
    assert all(r.headers["Authorization"].startswith("Basic ") for r in seen)
    assert "s3cret" not in repr(settings)


def test_binding_beyond_loopback_needs_auth_or_a_loud_opt_out(caplog: pytest.LogCaptureFixture) -> None:
    none = AuthConfig()
    check_binding("127.0.0.1", none, insecure_no_auth=False)
    check_binding("::1", none, insecure_no_auth=False)
    for host in ("0.0.0.0", "192.168.1.5", "myhost.example"):
        with pytest.raises(ConfigError, match=r"refusing to serve HTTP on .* without authentication"):
            check_binding(host, none, insecure_no_auth=False)
    check_binding(
        "0.0.0.0",
        AuthConfig.model_validate({"tokens": [{"principal": "a", "token": "t" * 20}]}),
        insecure_no_auth=False,
    )
    with caplog.at_level(logging.WARNING):
        check_binding("0.0.0.0", none, insecure_no_auth=True)
    assert "INSECURE" in caplog.text


def test_the_cli_refuses_to_bind_everywhere_without_auth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MULTIMODAL_MCP_TOKENS", raising=False)
    argv = ["serve", "--transport", "http", "--host", "0.0.0.0", "--profile", "tiny"]
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--store-dir", str(tmp_path)])
    assert exited.value.code == 2
    assert "refusing to serve HTTP on 0.0.0.0 without authentication" in capsys.readouterr().err


def test_tokens_from_the_environment_become_static_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MULTIMODAL_MCP_TOKENS", "alice:" + "a" * 20 + ", bob:" + "b:c" * 7)
    assert cli._tokens_from_env() == {"alice": "a" * 20, "bob": "b:c" * 7}
    monkeypatch.setenv("MULTIMODAL_MCP_TOKENS", "just-a-token")
    with pytest.raises(ConfigError, match="principal:token"):
        cli._tokens_from_env()


def test_allowed_hosts_and_origins_come_from_the_bind_address_and_the_config() -> None:
    loopback = transport_security(HttpSettings(), "127.0.0.1")
    assert loopback.enable_dns_rebinding_protection
    assert {"127.0.0.1:*", "localhost:*", "[::1]:*"} <= set(loopback.allowed_hosts)
    assert "http://localhost:*" in loopback.allowed_origins
    assert not any("example" in h for h in loopback.allowed_hosts)
    # Any of 127.0.0.0/8 is loopback, but only 127.0.0.1 is a loopback name: the address itself too.
    other_loopback = transport_security(HttpSettings(), "127.0.0.2")
    assert {"127.0.0.2:*", "127.0.0.1:*", "localhost:*"} <= set(other_loopback.allowed_hosts)
    team = transport_security(
        HttpSettings(allowed_hosts=("mcp.example.com",), allowed_origins=("https://chat.example.com",)),
        "10.0.0.7",
    )
    assert {"10.0.0.7:*", "mcp.example.com", "mcp.example.com:*"} <= set(team.allowed_hosts)
    assert "localhost:*" not in team.allowed_hosts
    assert {"https://mcp.example.com", "https://chat.example.com"} <= set(team.allowed_origins)


async def test_an_oauth_server_advertises_its_metadata_and_serves_jwt_callers(
    tmp_path: Path, tiny_dir: Path, rsa_key: rsa.RSAPrivateKey, public_key_file: Path
) -> None:
    oauth = {"issuer": ISSUER, "resource_url": RESOURCE, "public_key_file": str(public_key_file)}
    config = make_config(
        tmp_path, tiny_dir, tmp_path, http={"allowed_hosts": ["mcp.example.com"], "auth": {"oauth": oauth}}
    )
    async with serving(config, create_services(config, cpu_only())) as url:
        refused = await raw_post(url)
        assert refused.status_code == 401
        metadata_url = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        assert metadata_url in refused.headers["WWW-Authenticate"]
        async with httpx2.AsyncClient() as client:
            metadata = (
                await client.get(url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"))
            ).json()
        assert metadata["resource"] == RESOURCE and metadata["authorization_servers"] == [ISSUER]
        assert (await raw_post(url, sign(rsa_key, aud="https://other.example.com/mcp"))).status_code == 401
        async with http_client(url, sign(rsa_key)) as carol:
            await call_ok(carol, "list_models", {})


def test_the_readme_security_examples_are_valid_configuration(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text()
    section = readme.split("## Security", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```toml\n")[1:]]
    blocks = [
        b for b in blocks if "[server.http" in b
    ]  # the team examples (other subsections have their own)
    assert len(blocks) == 2
    config_file = tmp_path / "team.toml"
    config_file.write_text(blocks[0] + blocks[1])
    config = load_config(profile="tiny", config_file=config_file, cache_dir=tmp_path, home=tmp_path)
    auth = config.server.http.auth
    assert [t.principal for t in auth.tokens] == ["alice", "bob"]
    assert auth.tokens[0].sha256 == hashlib.sha256(b"example-token-for-alice-0123456789").hexdigest()
    assert auth.oauth is not None and auth.oauth.expected_audience == "https://mcp.example.com/mcp"
    assert config.server.http.allowed_hosts == ("mcp.example.com",)
