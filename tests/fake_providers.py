"""Loopback fakes of the OpenAI, Gemini and Anthropic HTTP APIs, for the hosted backends' tests.

Each fake is a real HTTP server on 127.0.0.1 (``http.server`` in a thread) speaking the provider's
wire format, so the real SDKs send real requests; every request is recorded (path, headers, JSON
body or multipart form) for the tests to inspect. Scripted responses (errors, delays, malformed
bodies) are queued with :meth:`FakeProvider.queue`; otherwise the default responder answers.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import json
import secrets
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

from multimodal_mcp.catalogs import text as catalog_text
from multimodal_mcp.config import Config, load_config

OPENAI_KEY = "sk-test-0123456789abcdef"
GEMINI_KEY = "gm-test-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    form: dict[str, list[tuple[str | None, bytes]]] = field(default_factory=dict)


@dataclass
class Scripted:
    """A scripted reply; with no body (and status 200) the default responder's, after ``delay``."""

    status: int = 200
    body: bytes | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def png_b64(size: tuple[int, int], colour: tuple[int, int, int] = (200, 80, 40)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _multipart(content_type: str, body: bytes) -> dict[str, list[tuple[str | None, bytes]]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    form: dict[str, list[tuple[str | None, bytes]]] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        form.setdefault(name, []).append((part.get_filename(), payload))
    return form


class FakeProvider:
    """A fake provider API on loopback. ``responder(request) -> Scripted`` answers unscripted calls."""

    def __init__(self, responder: Callable[[Recorded], Scripted]) -> None:
        self.responder = responder
        self.requests: list[Recorded] = []
        self.script: deque[Scripted] = deque()
        self.release = threading.Event()  # ends every scripted delay early (at teardown)
        self.arrived = threading.Event()  # set whenever a request arrives
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                recorded = Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                content_type = self.headers.get("content-type", "")
                if content_type.startswith("application/json"):
                    recorded.json = json.loads(body)
                elif content_type.startswith("multipart/form-data"):
                    recorded.form = _multipart(content_type, body)
                fake.requests.append(recorded)
                fake.arrived.set()
                reply = fake.script.popleft() if fake.script else fake.responder(recorded)
                if reply.delay:
                    fake.release.wait(reply.delay)
                if reply.body is None and reply.status == 200:  # a delay only: then the usual answer
                    reply = fake.responder(recorded)
                data = (
                    json.dumps(reply.body).encode() if isinstance(reply.body, dict) else (reply.body or b"")
                )
                try:
                    self.send_response(reply.status)
                    headers = {"content-type": "application/json", **reply.headers}
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a timeout test)
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # A short poll interval: stop() (shutdown) waits up to one interval, at every test's teardown.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def queue(self, *replies: Scripted) -> None:
        self.script.extend(replies)

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# --- OpenAI ---------------------------------------------------------------------------------------


class OpenAIFake(FakeProvider):
    """Images (generations, edits) and chat completions, as api.openai.com/v1 answers them."""

    def __init__(self) -> None:
        self.chat_answer = "A cat sits on a red sofa."
        self.chat_top_logprobs: list[tuple[str, float]] | None = None
        """When set, chat answers carry these (token, logprob) pairs as the first token's top_logprobs."""
        super().__init__(self._respond)

    def _images(self, model: str, size: str, n: int) -> dict[str, Any]:
        w, h = (int(v) for v in size.split("x")) if size != "auto" else (1024, 1024)
        data = []
        for i in range(n):
            item: dict[str, Any] = {"b64_json": png_b64((w, h), (40 * i, 120, 200))}
            if model == "dall-e-3":
                item["revised_prompt"] = "A detailed isometric illustration of a cozy bookshop, warm light."
            data.append(item)
        body: dict[str, Any] = {"created": 1, "data": data}
        if model.startswith("gpt-image"):
            body["usage"] = {
                "input_tokens": 12,
                "output_tokens": 4160 * n,
                "total_tokens": 12 + 4160 * n,
                "input_tokens_details": {"image_tokens": 0, "text_tokens": 12},
            }
        return body

    def _respond(self, request: Recorded) -> Scripted:
        path = request.path.partition("?")[0]  # Azure adds ?api-version=...
        if path.endswith("/images/generations"):
            body = request.json
            return Scripted(body=self._images(body["model"], body.get("size", "1024x1024"), body.get("n", 1)))
        if path.endswith("/images/edits"):
            form = request.form
            model = form["model"][0][1].decode()
            size = form["size"][0][1].decode() if "size" in form else "auto"
            n = int(form["n"][0][1]) if "n" in form else 1
            return Scripted(body=self._images(model, size, n))
        if path.endswith("/chat/completions"):
            logprobs = None
            if self.chat_top_logprobs is not None and request.json.get("logprobs"):
                top = [{"token": t, "logprob": lp, "bytes": None} for t, lp in self.chat_top_logprobs]
                first = {"token": top[0]["token"], "logprob": top[0]["logprob"], "bytes": None}
                logprobs = {"content": [{**first, "top_logprobs": top}], "refusal": None}
            return Scripted(
                body={
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": request.json["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.chat_answer, "refusal": None},
                            "logprobs": logprobs,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 850, "completion_tokens": 9, "total_tokens": 859},
                }
            )
        return Scripted(status=404, body={"error": {"message": f"no route {request.path}"}})


def openai_error(status: int, message: str, code: str | None = None, **headers: str) -> Scripted:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return Scripted(status=status, body={"error": error}, headers=headers)


# --- Gemini ---------------------------------------------------------------------------------------


class GeminiFake(FakeProvider):
    """``models/{model}:generateContent`` as the Gemini API answers it (text or image parts)."""

    def __init__(self) -> None:
        self.answer = "In the second image the cat is gone."
        super().__init__(self._respond)

    def _respond(self, request: Recorded) -> Scripted:
        if ":generateContent" not in request.path:
            return Scripted(
                status=404, body={"error": {"code": 404, "message": "no route", "status": "NOT_FOUND"}}
            )
        config = request.json.get("generationConfig", {})
        if "IMAGE" in config.get("responseModalities", []):
            ratio = config.get("imageConfig", {}).get("aspectRatio", "1:1")
            size = {"1:1": (1024, 1024), "16:9": (1344, 768), "3:2": (1248, 832)}.get(ratio, (1024, 1024))
            parts: list[dict[str, Any]] = [{"inlineData": {"mimeType": "image/png", "data": png_b64(size)}}]
            usage = {"promptTokenCount": 7, "candidatesTokenCount": 1290, "totalTokenCount": 1297}
        else:
            parts = [{"text": self.answer}]
            usage = {"promptTokenCount": 530, "candidatesTokenCount": 11, "totalTokenCount": 541}
        return Scripted(
            body={
                "candidates": [
                    {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
                ],
                "usageMetadata": usage,
                "modelVersion": "fake",
            }
        )


def gemini_error(status: int, message: str, state: str, **headers: str) -> Scripted:
    return Scripted(
        status=status, body={"error": {"code": status, "message": message, "status": state}}, headers=headers
    )


# --- Google's OAuth token endpoint (Vertex AI with a service account) --------------------------------

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


class GoogleTokenFake(FakeProvider):
    """``POST /token`` as oauth2.googleapis.com answers a service account's JWT-bearer grant: the
    assertion must be an RS256 JWT signed by the account's key, from its email, for Google's token
    endpoint (the audience google-auth always names, wherever the key file's token_uri points).
    Each grant gets a fresh access token (``issued`` lists them)."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.client_email = "mmcp-test@fake-project.iam.gserviceaccount.com"
        self.refresh_token = "1//fake-refresh-token"
        self.issued: list[str] = []
        self.claims: list[dict[str, Any]] = []
        super().__init__(self._respond)

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def service_account_file(self, path: Path, project: str = "fake-project") -> Path:
        """A service-account key file (JSON, as the Cloud console downloads it) with this fake's key,
        whose token_uri is this fake."""
        from cryptography.hazmat.primitives import serialization

        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        info = {
            "type": "service_account",
            "project_id": project,
            "private_key_id": "fake-key-1",
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "token_uri": self.token_uri,
        }
        path.write_text(json.dumps(info))
        return path

    def authorized_user_file(self, path: Path) -> Path:
        """A user's credentials as ``gcloud auth application-default login`` writes them (this fake grants
        ``refresh_token`` for them). google-auth sends a user's refresh to Google's token endpoint
        whatever the file says, so a test points its ``_GOOGLE_OAUTH2_TOKEN_ENDPOINT`` here."""
        info = {
            "type": "authorized_user",
            "client_id": "fake-client.apps.googleusercontent.com",
            "client_secret": "fake-client-secret",
            "refresh_token": self.refresh_token,
        }
        path.write_text(json.dumps(info))
        return path

    def _issue(self) -> Scripted:
        token = f"ya29.fake-{secrets.token_urlsafe(16)}"
        self.issued.append(token)
        return Scripted(body={"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _respond(self, request: Recorded) -> Scripted:
        import jwt

        form = urllib.parse.parse_qs(request.body.decode())
        if request.path == "/token" and form.get("grant_type") == ["refresh_token"]:
            if form.get("refresh_token") != [self.refresh_token]:
                return Scripted(status=400, body={"error": "invalid_grant"})
            return self._issue()
        if request.path != "/token" or form.get("grant_type") != [JWT_BEARER]:
            return Scripted(status=400, body={"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(
                form["assertion"][0],
                self.private_key.public_key(),
                algorithms=["RS256"],
                audience=GOOGLE_TOKEN_AUDIENCE,
                issuer=self.client_email,
            )
        except (KeyError, jwt.InvalidTokenError) as exc:
            return Scripted(status=400, body={"error": "invalid_grant", "error_description": str(exc)})
        self.claims.append(claims)
        return self._issue()


# --- Anthropic ------------------------------------------------------------------------------------


class AnthropicFake(FakeProvider):
    """``POST /v1/messages`` as api.anthropic.com answers it: text blocks, or a ``tool_use`` block
    whose input is ``tool_input`` when the request forces a tool."""

    def __init__(self) -> None:
        self.answer = "A receipt from a coffee shop; the total is 4.20."
        self.tool_input: dict[str, Any] = {"total": 4.2}
        self.stop_reason = "end_turn"
        super().__init__(self._respond)

    def _respond(self, request: Recorded) -> Scripted:
        if request.path != "/v1/messages":
            return anthropic_error(404, f"no route {request.path}", "not_found_error")
        body = request.json
        forced = (body.get("tool_choice") or {}).get("name")
        if forced:
            content: list[dict[str, Any]] = [
                {"type": "tool_use", "id": "toolu_1", "name": forced, "input": self.tool_input}
            ]
        else:
            content = [{"type": "text", "text": self.answer}]
        return Scripted(
            body={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": content,
                "stop_reason": "tool_use" if forced else self.stop_reason,
                "stop_sequence": None,
                "usage": {"input_tokens": 1530, "output_tokens": 17},
            }
        )


def anthropic_error(status: int, message: str, kind: str, **headers: str) -> Scripted:
    return Scripted(
        status=status, body={"type": "error", "error": {"type": kind, "message": message}}, headers=headers
    )


# --- configuration --------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def hosted_config(
    tmp_path: Path,
    tiny_dir: Path,
    allowed_root: Path,
    *,
    openai_url: str,
    gemini_url: str,
    environ: dict[str, str] | None = None,
    openai: dict[str, Any] | None = None,
    gemini: dict[str, Any] | None = None,
    anthropic_url: str = "http://127.0.0.1:9",
    extra_toml: str = "",
) -> Config:
    """The tiny profile plus the hosted models, with the providers pointed at loopback fakes
    (and ``extra_toml`` appended to the config file: more models, more hosted tables)."""
    lines = []
    providers = (
        ("openai", openai_url, openai),
        ("gemini", gemini_url, gemini),
        ("anthropic", anthropic_url, None),
    )
    for backend, url, extra in providers:
        lines.append(f"[hosted.{backend}]")
        settings = {"base_url": url, "timeout_seconds": 20, "max_retries": 2, **(extra or {})}
        lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items()]
    lines.append(catalog_text("hosted"))  # the hosted catalog is a config file too
    lines.append(extra_toml)
    path = tmp_path / "hosted.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(
        profile="tiny",
        config_file=path,
        cache_dir=tmp_path / "cache",
        home=tmp_path,
        default_allowed_roots=[allowed_root],
        overrides={"store_dir": tmp_path / "store", "tiny_dir": tiny_dir},
        environ=(
            {"OPENAI_API_KEY": OPENAI_KEY, "GEMINI_API_KEY": GEMINI_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_KEY}
            if environ is None
            else environ
        ),
    )
