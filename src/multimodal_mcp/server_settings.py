"""The ``[server.*]`` sub-tables: URL fetching, the model pool, the image store's retention, what
results may weigh, verification, HTTP and who may call it, spending and the safety filter.

Part of the config file's schema (:mod:`multimodal_mcp.config` re-exports every name here); kept apart
so that ``config.py`` holds the models, the profiles' reading and :class:`~multimodal_mcp.config.Config`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class UrlSettings(_Frozen):
    """Fetching images from http(s) URLs named in arguments (``[server.urls]``). Off by default."""

    enabled: bool = Field(default=False, description="Fetch http(s) image URLs named in arguments.")
    max_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest body read; the download stops at it."
    )
    timeout_seconds: float = Field(
        default=15, gt=0, le=300, description="Total time for one fetch, redirects and DNS included."
    )
    max_redirects: int = Field(default=5, ge=0, le=10, description="Redirects followed, each re-checked.")
    allow_networks: tuple[str, ...] = Field(
        default=(),
        description="DANGEROUS: networks exempt from the address check (e.g. '127.0.0.1/32' for a local "
        "test server). Anything listed here becomes reachable by whoever writes the arguments.",
    )

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, networks: tuple[str, ...]) -> tuple[str, ...]:
        for net in networks:
            try:
                ipaddress.ip_network(net, strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"allow_networks: {net!r} is not a network like '127.0.0.1/32' ({exc})"
                ) from exc
        return networks


class PoolSettings(_Frozen):
    """How the model pool places, keeps, batches and queues work."""

    gpu_headroom_gib: float = Field(
        default=1.5, ge=0, description="GPU memory kept free for activations, per GPU (GiB)."
    )
    cpu_budget_gib: float | None = Field(
        default=None,
        gt=0,
        description="RAM for models on or offloaded to the CPU (GiB); default: half of RAM.",
    )
    keep_alive_seconds: float = Field(
        default=900, ge=0, description="Unload a model idle this long; 0 keeps models until evicted."
    )
    preload: tuple[str, ...] = Field(default=(), description="Models loaded in the background at startup.")
    max_queue: int = Field(default=32, ge=0, description="Waiting calls per device before 'busy' errors.")
    placement_wait_seconds: float = Field(
        default=30, ge=0, description="How long a load waits for models in use to free memory before 'busy'."
    )
    clip_max_batch: int = Field(
        default=32, ge=1, le=1024, description="Most images in one CLIP forward pass."
    )
    clip_batch_wait_ms: float = Field(
        default=5,
        ge=0,
        le=1000,
        description="How long the first CLIP request waits for others to batch with.",
    )
    text_cache_size: int = Field(default=4096, ge=0, description="CLIP label embeddings kept per model.")
    job_wait_seconds: float = Field(
        default=50,
        gt=0,
        description="A call running longer returns a job handle (get_job) instead of waiting.",
    )
    job_ttl_seconds: float = Field(default=3600, gt=0, description="How long finished jobs stay retrievable.")
    max_jobs_per_principal: int = Field(
        default=64, ge=1, description="Finished jobs kept for each principal; the oldest go first."
    )
    max_job_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Finished jobs' results kept in all (bytes, as JSON); the oldest go first.",
    )


STORE_URL_SCHEMES = frozenset({"s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "memory"})
"""Object stores obstore opens by URL whose writes can be conditional (its LocalStore, ``file://``,
cannot update conditionally: a directory is server.store_dir)."""


class StoreSettings(_Frozen):
    """``[server.store]``: how much the image store keeps and where (``server.store_dir``, or an object
    store at ``url``).

    Over either limit, the oldest images go first, except those a running or retained job refers to
    and those a kept image was made from (its ``parents``). Checked when the server starts, after
    each write that takes the store over ``max_bytes``, and by a write once every
    ``sweep_seconds`` for ``max_age_days``.
    """

    max_bytes: int = Field(
        default=10 * 1024**3,
        ge=0,
        description="Most bytes the stored images and their records may take (10 GiB); 0: no limit. "
        "When a write goes over it, images are removed until the store is under 90% of it.",
    )
    max_age_days: float = Field(
        default=30, ge=0, description="Images stored longer ago than this are removed; 0: no age limit."
    )
    sweep_seconds: float = Field(
        default=3600, gt=0, description="How often, at most, a write looks for images past max_age_days."
    )
    url: str | None = Field(
        default=None,
        description="An object store for the images instead of server.store_dir (needs the s3 extra, "
        "obstore): 's3://bucket/prefix', 'gs://bucket/prefix', 'az://account/container/prefix', or "
        "'memory://' (this process only, for tests). Several servers may share one. max_bytes and "
        "max_age_days are not enforced there: use the bucket's lifecycle rules.",
    )
    options: dict[str, str] = Field(
        default_factory=dict,
        description="Passed to obstore's from_url as the store's configuration (e.g. region, endpoint; "
        "credentials are better left to the environment obstore reads, e.g. AWS_ACCESS_KEY_ID).",
    )

    @field_validator("url")
    @classmethod
    def _object_store_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        scheme = url.partition("://")[0].lower()
        if "://" not in url or scheme not in STORE_URL_SCHEMES:
            raise ValueError(
                f"server.store.url {url[:80]!r} is not an object store URL; use one of "
                f"{', '.join(s + '://' for s in sorted(STORE_URL_SCHEMES))} (e.g. 's3://bucket/images'), "
                "or leave it out to keep images in server.store_dir"
            )
        if importlib.util.find_spec("obstore") is None:
            raise ValueError(
                "server.store.url needs obstore, which is not installed: pip install 'multimodal-mcp[s3]', "
                "or leave url out to keep images in server.store_dir"
            )
        return url

    @property
    def byte_limit(self) -> int | None:
        return self.max_bytes or None

    @property
    def max_age_seconds(self) -> float | None:
        return self.max_age_days * 86400 if self.max_age_days else None


class ClientLimits(_Frozen):
    """What one tool result may weigh for the client reading it (see ``CLIENT_LIMITS`` for presets)."""

    max_result_bytes: int = Field(
        default=1024 * 1024,
        ge=20_000,
        description="The whole result serialised as JSON (text, previews' base64, structured content).",
    )
    max_result_tokens: int | None = Field(
        default=None,
        ge=2_000,
        description="The whole result in estimated tokens (text at 3 characters per token, images as "
        "the larger of their base64 length at 3 characters per token and width*height/750); None: no cap.",
    )
    max_image_side: int = Field(default=8000, ge=64, description="Longest side of any inline image (px).")


CLIENT_LIMITS: dict[str, ClientLimits] = {
    # Claude Desktop rejects tool results over 1 MiB.
    "claude-desktop": ClientLimits(max_result_bytes=1024 * 1024),
    # Claude Code refuses or truncates tool output over 25,000 tokens (MAX_MCP_OUTPUT_TOKENS), and some
    # versions count an image's base64 and the structured content as text.
    "claude-code": ClientLimits(max_result_bytes=1024 * 1024, max_result_tokens=25_000),
    # Any MCP client: the common 1 MiB cap and the 8000 px side limit of vision models.
    "generic": ClientLimits(max_result_bytes=1024 * 1024),
}


class VerificationSettings(_Frozen):
    """When generate_image(verify=True) and describe_image(ground=True) call a result good."""

    prompt_threshold: float = Field(
        default=0.22,
        ge=-1.0,
        le=1.0,
        description="An image passes when the CLIP cosine similarity of image and prompt is at least this "
        "(tuned for CLIP ViT-L/14 and ViT-B/32: matching pairs score about 0.25-0.35, unrelated ones "
        "about 0.10-0.18).",
    )
    label_threshold: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="A label or phrase counts as present when its score (CLIP's probability that it "
        "describes the image better than neutral captions) is at least this.",
    )
    max_phrases: int = Field(
        default=16, ge=1, le=64, description="Most phrases describe_image(ground=True) checks."
    )
    # verify="thorough" and the OCR checks of describe_image(ground=True). Starting points, not yet
    # measured on real models: tune them on your models with bench/adherence.py.
    yes_threshold: float = Field(
        default=0.5,
        gt=0.0,
        lt=1.0,
        description="A fact the vision model checks is supported when P(yes) is at least this.",
    )
    detector_threshold: float = Field(
        default=0.2,
        gt=0.0,
        lt=1.0,
        description="Detector boxes scoring under this are ignored when counting and placing objects.",
    )
    text_threshold: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="Text asked for counts as shown when its best match in the OCR'd text is at least "
        "this similar (0-1, difflib's ratio on case-folded text).",
    )
    ocr_min_score: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="OCR lines read with less confidence than this are ignored."
    )
    ocr: Literal["rapidocr", "off"] = Field(
        default="rapidocr",
        description="The OCR engine for text checks ('rapidocr': pip install 'multimodal-mcp[ocr]').",
    )
    max_facts: int = Field(default=12, ge=1, le=32, description="Most facts verify='thorough' checks.")
    fact_tokens: int = Field(
        default=512, ge=64, le=4096, description="Tokens the text model may spend listing a prompt's facts."
    )


_PRINCIPAL_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_TOKEN_CHARS = 16


class StaticToken(_Frozen):
    """A bearer token for one team member. Only its SHA-256 is kept: give ``sha256`` in files you
    share, or ``token`` (hashed on load, never logged)."""

    principal: str = Field(description="Who the token stands for; owns the images and jobs it makes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 (hex) of the token.")

    @model_validator(mode="before")
    @classmethod
    def _hash_plain_token(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "token" in data:
            data = dict(data)
            token = data.pop("token")
            if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
                raise ValueError(f"a token must be a string of at least {MIN_TOKEN_CHARS} characters")
            if "sha256" in data:
                raise ValueError("give either 'token' or 'sha256', not both")
            data["sha256"] = hashlib.sha256(token.encode()).hexdigest()
        return data

    @field_validator("principal")
    @classmethod
    def _principal_name(cls, name: str) -> str:
        if not _PRINCIPAL_NAME.match(name):
            raise ValueError(f"principal {name[:80]!r} must be 1-64 letters, digits or '._@-'")
        return name


class OAuthSettings(_Frozen):
    """OAuth resource-server mode: accept access tokens an authorization server issued for this server.

    Tokens are JWTs checked against ``public_key_file``, ``jwks_file`` or ``jwks_url`` (signature,
    ``exp``, ``iss``, ``aud``), or opaque tokens checked by RFC 7662 introspection.
    """

    issuer: str = Field(description="The authorization server (the tokens' 'iss').")
    resource_url: str = Field(
        description="This server's public MCP URL, e.g. https://mcp.example.com/mcp (advertised in the "
        "protected resource metadata, and the default audience)."
    )
    audience: str | None = Field(default=None, description="Required 'aud'; default: resource_url.")
    public_key_file: Path | None = None
    jwks_file: Path | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    introspection_url: str | None = None
    introspection_client_id: str | None = None
    introspection_client_secret: str | None = Field(default=None, repr=False)
    required_scopes: tuple[str, ...] = ()
    principal_claim: str = Field(default="sub", description="The claim naming the user.")
    leeway_seconds: float = Field(default=30, ge=0, le=600)

    @model_validator(mode="after")
    def _one_key_source(self) -> OAuthSettings:
        sources = [self.public_key_file, self.jwks_file, self.jwks_url, self.introspection_url]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "oauth needs exactly one of public_key_file, jwks_file, jwks_url or introspection_url"
            )
        for name in ("issuer", "resource_url", "jwks_url", "introspection_url"):
            value = getattr(self, name)
            if value is not None and not value.startswith(("https://", "http://")):
                raise ValueError(f"oauth.{name} must be an http(s) URL")
        return self

    @property
    def expected_audience(self) -> str:
        return self.audience or self.resource_url


class AuthConfig(_Frozen):
    """Who may call an HTTP server: static team tokens, OAuth access tokens, or both."""

    tokens: tuple[StaticToken, ...] = ()
    oauth: OAuthSettings | None = None

    @property
    def configured(self) -> bool:
        return bool(self.tokens) or self.oauth is not None

    @field_validator("tokens")
    @classmethod
    def _distinct(cls, tokens: tuple[StaticToken, ...]) -> tuple[StaticToken, ...]:
        if len({t.sha256 for t in tokens}) != len(tokens):
            raise ValueError("two static tokens are the same; each team member needs their own")
        return tokens


class HttpSettings(_Frozen):
    """The streamable HTTP transport: binding, DNS-rebinding protection, body limit and auth."""

    host: str = Field(default="127.0.0.1", description="Bind address; anything but loopback needs auth.")
    port: int = Field(default=8000, ge=0, le=65535)
    allowed_hosts: tuple[str, ...] = Field(
        default=(),
        description="Extra Host header values clients use (e.g. the name behind a reverse proxy).",
    )
    allowed_origins: tuple[str, ...] = Field(
        default=(), description="Extra browser Origins allowed, e.g. 'https://chat.example.com'."
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body; bigger ones get 413."
    )
    max_connections: int = Field(
        default=1000,
        ge=16,
        description="Open client connections at once; more are closed at once. Lowered at start to "
        "leave 128 file descriptors free under the open-file limit (raised to the hard limit first).",
    )
    header_timeout_seconds: float = Field(
        default=10,
        gt=0,
        le=300,
        description="A connection that sends no whole request head this long is closed.",
    )
    idle_timeout_seconds: float = Field(
        default=5,
        gt=0,
        le=3600,
        description="A kept-alive connection idle this long between requests is closed.",
    )
    max_sessions: int = Field(default=1000, ge=1, description="Open MCP sessions in all; more get 503.")
    max_sessions_per_principal: int = Field(
        default=32, ge=1, description="Open MCP sessions of one principal (all anonymous callers are one)."
    )
    max_requests_per_session: int = Field(
        default=32, ge=1, description="Requests in flight at once in one MCP session; more get 429."
    )
    session_idle_seconds: float = Field(
        default=600, gt=0, description="An MCP session with no request this long ends."
    )
    auth: AuthConfig = AuthConfig()


class SpendingSettings(_Frozen):
    """Whether calls to paid models (``ModelSpec.is_paid``) need the user's confirmation."""

    confirm: Literal["ask", "allow", "deny"] = Field(
        default="ask",
        description="ask: confirm each paid call with the user through MCP elicitation where the client "
        "supports it; allow: never ask; deny: refuse every paid call.",
    )
    default_without_elicitation: Literal["allow", "deny"] = Field(
        default="allow",
        description="With confirm = 'ask': what happens when the client cannot ask its user "
        "(no elicitation support).",
    )


SafetyMode = Literal["auto", "on", "off"]
Transport = Literal["stdio", "http"]


class SafetySettings(_Frozen):
    """An optional filter that withholds generated images a classifier flags, whatever the model."""

    filter: SafetyMode = Field(
        default="auto",
        description="'on', 'off', or 'auto': on when serving HTTP, off for stdio (load_config resolves it).",
    )
    classifier: str = Field(
        default="open-nsfw",
        min_length=1,
        description="'open-nsfw' (the [safety] extra), or 'package.module:factory' returning a SafetyFilter.",
    )
    threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="An image scoring at least this is withheld."
    )

    @property
    def enabled(self) -> bool:
        """Whether to filter; an unresolved 'auto' (no transport given to load_config) means off."""
        return self.filter == "on"
