"""Gemini on Vertex AI with a Google Cloud project and application default credentials, through the
real google-genai and google-auth against loopback fakes: Vertex AI's generateContent (the Gemini fake)
and Google's OAuth token endpoint, with a fake service-account key made for the test."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from multimodal_mcp.config import Config, ConfigError, load_config
from multimodal_mcp.errors import BackendError, ProviderError
from multimodal_mcp.server.app import create_services

from fake_providers import JWT_BEARER, GeminiFake, GoogleTokenFake, Scripted, gemini_error
from helpers import cpu_only, photo

pytest.importorskip("google.genai")

PROJECT, LOCATION = "mmcp-test-project", "europe-west4"
EXPRESS_KEY = "vx-test-0123456789abcdef"
MODEL = """
[models.gemini-vertex]
task = "vlm"
backend = "vertex_ai"
source = "gemini-2.5-flash"
"""


@pytest.fixture
def token_fake() -> Iterator[GoogleTokenFake]:
    fake = GoogleTokenFake()
    yield fake
    fake.stop()


def _load(
    tmp_path: Path,
    environ: dict[str, str],
    hosted: str = "",
    backend: str = "vertex_ai",
    profile: str = "tiny",
) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(hosted + MODEL.replace('"vertex_ai"', f'"{backend}"'))
    return load_config(
        profile=profile, config_file=path, cache_dir=tmp_path / "cache", home=tmp_path, environ=environ
    )


def _project_environ(tmp_path: Path, token_fake: GoogleTokenFake) -> dict[str, str]:
    key_file = token_fake.service_account_file(tmp_path / "service-account.json")
    return {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "GOOGLE_CLOUD_LOCATION": LOCATION,
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
        "GOOGLE_API_KEY": EXPRESS_KEY,  # set too: a project wins, and the key is never sent
    }


async def test_a_project_with_a_service_account_sends_its_bearer_token_to_the_project_path_and_no_key(
    tmp_path: Path, gemini_fake: GeminiFake, token_fake: GoogleTokenFake
) -> None:
    hosted = f'[hosted.vertex_ai]\nbase_url = "{gemini_fake.url}/"\n'
    config = _load(tmp_path, _project_environ(tmp_path, token_fake), hosted)
    services = create_services(config, devices=cpu_only())
    try:
        chat = services.hub.vision_chat("gemini-vertex")
        first = await chat.answer([photo("coffee", 16)], "what?", max_tokens=9)
        await chat.answer([photo("chelsea", 16)], "and this?", max_tokens=9)
    finally:
        await services.hub.aclose()
    assert first.text == gemini_fake.answer
    # One JWT-bearer grant, signed by the service account's key (the fake checks the signature).
    (grant,) = token_fake.requests
    assert urllib.parse.parse_qs(grant.body.decode())["grant_type"] == [JWT_BEARER]
    (claims,) = token_fake.claims
    assert "https://www.googleapis.com/auth/cloud-platform" in claims["scope"].split()
    (token,) = token_fake.issued
    # Both calls went to the project's path with that token, and without any API key.
    assert len(gemini_fake.requests) == 2
    for request in gemini_fake.requests:
        assert request.path == (
            f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
            "gemini-2.5-flash:generateContent"
        )
        assert request.headers["authorization"] == f"Bearer {token}"
        assert "x-goog-api-key" not in request.headers
        assert EXPRESS_KEY not in str(request.headers)


async def test_gclouds_user_credentials_file_in_the_config_is_refreshed_and_sent_as_a_bearer_token(
    tmp_path: Path, gemini_fake: GeminiFake, token_fake: GoogleTokenFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user's refresh always goes to Google's endpoint: here, the loopback fake.
    monkeypatch.setattr("google.oauth2.credentials._GOOGLE_OAUTH2_TOKEN_ENDPOINT", token_fake.token_uri)
    adc_file = token_fake.authorized_user_file(tmp_path / "application_default_credentials.json")
    hosted = (
        f'[hosted.vertex_ai]\nbase_url = "{gemini_fake.url}/"\nproject = "{PROJECT}"\n'
        f'credentials_file = "{adc_file}"\n'
    )
    services = create_services(_load(tmp_path, {}, hosted), devices=cpu_only())
    try:
        await services.hub.vision_chat("gemini-vertex").answer([photo("coffee", 16)], "what?", max_tokens=9)
    finally:
        await services.hub.aclose()
    (grant,) = token_fake.requests
    assert urllib.parse.parse_qs(grant.body.decode())["grant_type"] == ["refresh_token"]
    (request,) = gemini_fake.requests
    assert request.path.startswith(f"/v1beta1/projects/{PROJECT}/locations/global/publishers/google/models/")
    assert request.headers["authorization"] == f"Bearer {token_fake.issued[0]}"
    assert "x-goog-api-key" not in request.headers


def test_listings_say_which_mode_and_what_is_missing_never_a_secret(
    tmp_path: Path, token_fake: GoogleTokenFake
) -> None:
    environ = _project_environ(tmp_path, token_fake)
    project = create_services(_load(tmp_path, environ), devices=cpu_only()).hub.where("gemini-vertex")
    assert project["status"] == (
        f"hosted (vertex_ai, project '{PROJECT}' in '{LOCATION}', the credentials file "
        "GOOGLE_APPLICATION_CREDENTIALS names)"
    )
    adc = _load(tmp_path, {"GOOGLE_CLOUD_PROJECT": PROJECT})
    assert create_services(adc, devices=cpu_only()).hub.where("gemini-vertex")["status"] == (
        f"hosted (vertex_ai, project '{PROJECT}' in 'global', application default credentials "
        "(gcloud's login or the metadata server, tried at the first call))"
    )
    express = _load(tmp_path, {"GOOGLE_API_KEY": EXPRESS_KEY})
    assert create_services(express, devices=cpu_only()).hub.where("gemini-vertex")["status"] == (
        "hosted (vertex_ai, express mode, API key from GOOGLE_API_KEY)"
    )
    nothing = create_services(_load(tmp_path, {}), devices=cpu_only()).hub.where("gemini-vertex")
    assert nothing["status"] == (
        "hosted (vertex_ai, no credentials: set GOOGLE_CLOUD_PROJECT (with application default "
        "credentials) or GOOGLE_API_KEY)"
    )
    for where in (project, nothing):
        assert EXPRESS_KEY not in str(where) and "service-account.json" not in str(where)


async def test_with_neither_a_key_nor_a_project_the_call_says_exactly_what_to_set(
    tmp_path: Path, gemini_fake: GeminiFake
) -> None:
    hosted = f'[hosted.vertex_ai]\nbase_url = "{gemini_fake.url}/"\n'
    services = create_services(_load(tmp_path, {}, hosted), devices=cpu_only())
    with pytest.raises(BackendError) as info:
        await services.hub.vision_chat("gemini-vertex").answer([photo("coffee", 16)], "what?", max_tokens=9)
    message = str(info.value)
    assert message.startswith("model 'gemini-vertex' needs Vertex AI credentials")
    for name in (
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_API_KEY",
        "[hosted.vertex_ai]",
    ):
        assert name in message
    assert "gcloud auth application-default login" in message
    assert gemini_fake.requests == []


async def test_a_project_without_any_credentials_found_says_how_to_provide_them(
    tmp_path: Path, gemini_fake: GeminiFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    # google-auth's own search, with nothing to find: no GOOGLE_APPLICATION_CREDENTIALS, an empty gcloud
    # config directory, and no metadata server (not probed: only loopback may receive traffic here).
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setattr("google.auth.compute_engine._metadata._NO_GCE_CHECK", True)
    hosted = f'[hosted.vertex_ai]\nbase_url = "{gemini_fake.url}/"\n'
    services = create_services(_load(tmp_path, {"GOOGLE_CLOUD_PROJECT": PROJECT}, hosted), devices=cpu_only())
    try:
        with pytest.raises(BackendError) as info:
            await services.hub.vision_chat("gemini-vertex").answer(
                [photo("coffee", 16)], "what?", max_tokens=9
            )
    finally:
        await services.hub.aclose()
    assert str(info.value) == (
        f"model 'gemini-vertex' on Vertex AI (project '{PROJECT}') found no application default "
        "credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON key file, or run "
        "'gcloud auth application-default login' on the server's machine, and restart the server"
    )
    assert gemini_fake.requests == []


def test_the_location_picks_vertex_ais_regional_endpoint_unless_base_url_is_set(tmp_path: Path) -> None:
    def endpoint(location: str | None, hosted: str = "") -> str:
        environ = {
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            **({"GOOGLE_CLOUD_LOCATION": location} if location else {}),
        }
        return _load(tmp_path, environ, hosted).hosted.for_backend("vertex_ai").base_url

    assert endpoint(None) == "https://aiplatform.googleapis.com/"
    assert endpoint("us-central1") == "https://us-central1-aiplatform.googleapis.com/"
    assert endpoint("eu") == "https://aiplatform.eu.rep.googleapis.com/"
    proxy = '[hosted.vertex_ai]\nbase_url = "http://127.0.0.1:9/"\n'
    assert endpoint("us-central1", proxy) == "http://127.0.0.1:9/"
    # The file's table wins over the environment, as for every hosted setting.
    table = '[hosted.vertex_ai]\nproject = "from-the-file"\nlocation = "asia-northeast1"\n'
    settings = _load(tmp_path, {"GOOGLE_CLOUD_PROJECT": PROJECT}, table).hosted.for_backend("vertex_ai")
    assert (settings.project, settings.location) == ("from-the-file", "asia-northeast1")
    assert settings.base_url == "https://asia-northeast1-aiplatform.googleapis.com/"


def test_a_location_that_is_not_a_region_is_refused_in_plain_words_naming_its_variable(
    tmp_path: Path,
) -> None:
    environ = {"GOOGLE_CLOUD_PROJECT": PROJECT, "GOOGLE_CLOUD_LOCATION": "evil.example/#"}
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, environ)
    message = str(info.value)
    assert (
        "hosted.vertex_ai.location (read from GOOGLE_CLOUD_LOCATION): 'evil.example/#' is not a Google Cloud "
        in (message)
    )
    assert (
        "location: a region such as 'us-central1'" in message and "(model 'gemini-vertex' uses it)" in message
    )
    assert "pattern" not in message and "Value error" not in message
    # A server with no Vertex AI model is not stopped by a variable set for another program.
    path = tmp_path / "no-vertex.toml"
    path.write_text("")
    load_config(
        profile="tiny", config_file=path, cache_dir=tmp_path / "cache", home=tmp_path, environ=environ
    )
    with pytest.raises(
        ConfigError, match=r"hosted\.vertex_ai\.project: 'My Project' is not a Google Cloud project ID"
    ):
        _load(tmp_path, {}, '[hosted.vertex_ai]\nproject = "My Project"\n')


def test_google_cloud_settings_in_another_providers_table_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"hosted.openai.project is a Google Cloud setting; it applies to gemini and vertex_ai",
    ):
        _load(tmp_path, {}, '[hosted.openai]\nproject = "my-project-1"\n')


async def test_an_unreadable_credentials_file_is_an_error_naming_its_variable_not_its_path(
    tmp_path: Path, gemini_fake: GeminiFake
) -> None:
    broken = tmp_path / "secret-dir" / "key.json"
    broken.parent.mkdir()
    broken.write_text('{"type": "service_account", "client_email": "x"}')  # no private key
    environ = {"GOOGLE_CLOUD_PROJECT": PROJECT, "GOOGLE_APPLICATION_CREDENTIALS": str(broken)}
    hosted = f'[hosted.vertex_ai]\nbase_url = "{gemini_fake.url}/"\n'
    services = create_services(_load(tmp_path, environ, hosted), devices=cpu_only())
    with pytest.raises(BackendError) as info:
        await services.hub.vision_chat("gemini-vertex").answer([photo("coffee", 16)], "what?", max_tokens=9)
    message = str(info.value)
    assert "the credentials file that GOOGLE_APPLICATION_CREDENTIALS names cannot be read" in message
    assert "secret-dir" not in message and gemini_fake.requests == []


async def test_a_refused_token_grant_and_a_refused_project_are_plain_errors(
    tmp_path: Path, gemini_fake: GeminiFake, token_fake: GoogleTokenFake
) -> None:
    hosted = f'[hosted.vertex_ai]\nbase_url = "{gemini_fake.url}/"\nmax_retries = 0\n'
    services = create_services(
        _load(tmp_path, _project_environ(tmp_path, token_fake), hosted), devices=cpu_only()
    )
    chat = services.hub.vision_chat("gemini-vertex")
    token_fake.queue(
        Scripted(status=400, body={"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
    )
    try:
        with pytest.raises(ProviderError) as refused:
            await chat.answer([photo("coffee", 16)], "what?", max_tokens=9)
        assert "Google's token endpoint refused the credentials of model 'gemini-vertex'" in str(
            refused.value
        )
        assert "Invalid JWT Signature" in str(refused.value) and gemini_fake.requests == []
        gemini_fake.queue(
            gemini_error(403, "Permission 'aiplatform.endpoints.predict' denied", "PERMISSION_DENIED")
        )
        with pytest.raises(ProviderError) as denied:
            await chat.answer([photo("coffee", 16)], "what?", max_tokens=9)
    finally:
        await services.hub.aclose()
    assert f"refused access (HTTP 403) for model 'gemini-vertex' in project '{PROJECT}'" in str(denied.value)
    assert "Vertex AI User role" in str(denied.value)


# --- backend = "gemini" with GOOGLE_GENAI_USE_VERTEXAI, as google-genai reads it ----------------------


async def test_gemini_with_google_genai_use_vertexai_goes_to_the_project_on_vertex_ai(
    tmp_path: Path, gemini_fake: GeminiFake, token_fake: GoogleTokenFake
) -> None:
    environ = {**_project_environ(tmp_path, token_fake), "GOOGLE_GENAI_USE_VERTEXAI": "true"}
    hosted = f'[hosted.gemini]\nbase_url = "{gemini_fake.url}/"\n'
    config = _load(tmp_path, environ, hosted, backend="gemini")
    services = create_services(config, devices=cpu_only())
    assert services.hub.where("gemini-vertex")["status"] == (
        f"hosted (gemini, on Vertex AI, project '{PROJECT}' in '{LOCATION}', the credentials file "
        "GOOGLE_APPLICATION_CREDENTIALS names)"
    )
    try:
        await services.hub.vision_chat("gemini-vertex").answer([photo("coffee", 16)], "what?", max_tokens=9)
    finally:
        await services.hub.aclose()
    (request,) = gemini_fake.requests
    assert request.path == (
        f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
        "gemini-2.5-flash:generateContent"
    )
    assert request.headers["authorization"] == f"Bearer {token_fake.issued[0]}"
    assert "x-goog-api-key" not in request.headers


async def test_gemini_with_google_genai_use_vertexai_and_a_key_alone_uses_express_mode(
    tmp_path: Path, gemini_fake: GeminiFake
) -> None:
    environ = {"GOOGLE_GENAI_USE_VERTEXAI": "1", "GOOGLE_API_KEY": EXPRESS_KEY}
    hosted = f'[hosted.gemini]\nbase_url = "{gemini_fake.url}/"\n'
    services = create_services(_load(tmp_path, environ, hosted, backend="gemini"), devices=cpu_only())
    try:
        await services.hub.vision_chat("gemini-vertex").answer([photo("coffee", 16)], "what?", max_tokens=9)
    finally:
        await services.hub.aclose()
    (request,) = gemini_fake.requests
    assert request.path == "/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent"
    assert request.headers["x-goog-api-key"] == EXPRESS_KEY and "authorization" not in request.headers
    default = _load(tmp_path, environ, backend="gemini").hosted.for_backend("gemini")
    assert default.base_url == "https://aiplatform.googleapis.com/"  # not the Gemini Developer API's


def test_without_google_genai_use_vertexai_gemini_ignores_the_google_cloud_variables(tmp_path: Path) -> None:
    environ = {
        "GEMINI_API_KEY": "gm-key",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "GOOGLE_CLOUD_LOCATION": "not a region",
    }
    settings = _load(tmp_path, environ, backend="gemini").hosted.for_backend("gemini")
    assert not settings.vertexai and settings.project is None and settings.location is None
    assert settings.base_url == "https://generativelanguage.googleapis.com/"
    with pytest.raises(
        ConfigError, match=r"hosted.gemini.project applies on Vertex AI only: set vertexai = true"
    ):
        _load(tmp_path, {}, '[hosted.gemini]\nproject = "my-project-1"\n', backend="gemini")


def test_auto_takes_gemini_on_vertex_ai_when_a_project_is_set_with_google_genai_use_vertexai(
    tmp_path: Path,
) -> None:
    environ = {"GOOGLE_GENAI_USE_VERTEXAI": "true", "GOOGLE_CLOUD_PROJECT": PROJECT}
    auto = _load(tmp_path, environ, backend="gemini", profile="auto")
    assert auto.defaults["vlm"] == "gemini-2.5-flash"
    assert auto.defaults["text_to_image"] == "gemini-2.5-flash-image"
    assert (
        "GOOGLE_CLOUD_PROJECT set -> hosted Gemini models (gemini-2.5-flash-image, gemini-2.5-flash)"
        in (auto.profile_reasons[0])
    )
    project_only = _load(tmp_path, {"GOOGLE_CLOUD_PROJECT": PROJECT}, backend="gemini", profile="auto")
    assert project_only.defaults["vlm"] == "tiny-vlm", "a project alone is not for the Gemini Developer API"
