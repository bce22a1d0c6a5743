"""Gemini on Vertex AI: Google Cloud project access for :mod:`multimodal_mcp.backends.gemini_backend`.

google-genai speaks Vertex AI in two modes. **Project access**: a project and a location, with an OAuth
access token from application default credentials (a service-account key, gcloud's user login, or the
metadata server on Google Cloud), refreshed by google-auth. **Express mode**: an API key bound to a
project. A project wins over a key, as in google-genai. The settings come from ``[hosted.<backend>]``
or the variables google-genai and google-auth read themselves (:data:`CLOUD_ENV`), resolved by
:func:`multimodal_mcp.config.load_config`; nothing here reads the environment.

google-auth (Google's own library, a dependency of google-genai) is imported when a client is made.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from multimodal_mcp.config import HostedSettings
from multimodal_mcp.errors import BackendError
from multimodal_mcp.hosted_settings import PROJECT_SETTINGS

logger = logging.getLogger(__name__)
__all__ = ["CLOUD_ENV", "GLOBAL_ENDPOINT", "PROJECT_SETTINGS", "complete", "credentials_from_file"]

GLOBAL_ENDPOINT = "https://aiplatform.googleapis.com/"
MULTI_REGIONS = frozenset({"us", "eu"})
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
CLOUD_ENV: dict[str, tuple[str, ...]] = {
    "project": ("GOOGLE_CLOUD_PROJECT",),
    "location": ("GOOGLE_CLOUD_LOCATION",),
    "credentials_file": ("GOOGLE_APPLICATION_CREDENTIALS",),
}
"""The settings a Vertex AI endpoint reads from the environment when its table does not set them."""


def regional_endpoint(location: str) -> str:
    """Vertex AI's host for ``location``, as google-genai picks it: the global one for 'global',
    ``aiplatform.<mr>.rep.googleapis.com`` for a multi-region, else ``<region>-aiplatform.googleapis.com``."""
    if location == "global":
        return GLOBAL_ENDPOINT
    if location in MULTI_REGIONS:
        return f"https://aiplatform.{location}.rep.googleapis.com/"
    return f"https://{location}-aiplatform.googleapis.com/"


def complete(settings: HostedSettings, default_base_url: str) -> HostedSettings:
    """Settings on Vertex AI once read: with a project, the location defaults to 'global' and the
    endpoint follows it; with a key alone, the global endpoint. A ``base_url`` set in the file or the
    environment (one other than ``default_base_url``) is kept."""
    own_url = settings.base_url not in (default_base_url, GLOBAL_ENDPOINT)
    if settings.project is None:
        return settings if own_url else settings.model_copy(update={"base_url": GLOBAL_ENDPOINT})
    location = settings.location or "global"
    update: dict[str, Any] = {"location": location}
    if not own_url:
        update["base_url"] = regional_endpoint(location)
    return settings.model_copy(update=update)


def _key(settings: HostedSettings) -> bool:
    return settings.api_key is not None and bool(settings.api_key.get_secret_value())


def missing_credentials(settings: HostedSettings, model: str, backend: str) -> str | None:
    """The error for a call with neither a project nor a key (naming every way to set one), or ``None``."""
    if settings.project is not None or _key(settings):
        return None
    keys = " or ".join((settings.api_key_env, *settings.api_key_env_fallbacks))
    return (
        f"model {model!r} needs Vertex AI credentials: either a Google Cloud project with application "
        "default credentials (set GOOGLE_CLOUD_PROJECT, optionally GOOGLE_CLOUD_LOCATION, default "
        "'global'; and GOOGLE_APPLICATION_CREDENTIALS to a service-account JSON key file, or run "
        f"'gcloud auth application-default login'), or an express-mode API key in {keys}. Set them in "
        f"the server's environment (or project / api_key in [hosted.{backend}] of its config file) and "
        "restart it"
    )


def key_status(settings: HostedSettings, prefix: str = "") -> str:
    """Which mode and what is missing, for listings: never a key, a token or a file's path."""
    if settings.problems:
        return f"{prefix}not usable: {settings.problems[0]}"
    if settings.project is not None:
        if settings.credentials_file is None:
            found = (
                "application default credentials (gcloud's login or the metadata server, tried at "
                "the first call)"
            )
        else:
            found = (
                f"the credentials file {settings.set_from.get('credentials_file', 'credentials_file')} names"
            )
        return f"{prefix}project {settings.project!r} in {settings.location!r}, {found}"
    if settings.key_from is not None:
        return f"{prefix}express mode, API key from {settings.key_from}"
    return (
        f"{prefix}no credentials: set GOOGLE_CLOUD_PROJECT (with application default credentials) "
        f"or {settings.api_key_env}"
    )


def credentials_from_file(settings: HostedSettings, backend: str) -> Any:
    """The credentials in ``settings.credentials_file``: a service-account key or gcloud's
    ``application_default_credentials.json`` (an authorized user), each loaded by its own google-auth
    class, or ``None`` without a file: then google-genai asks google-auth for application default
    credentials (gcloud's login, the metadata server) at the first call, off the event loop.

    Raises:
        BackendError: the file cannot be read as either kind (the message names the setting, not the path).
    """
    if settings.credentials_file is None:
        return None
    from google.auth import exceptions
    from google.oauth2 import credentials as user
    from google.oauth2 import service_account

    source = settings.set_from.get("credentials_file", f"hosted.{backend}.credentials_file")
    kind = None
    try:
        with open(settings.credentials_file, encoding="utf-8") as file:
            info = json.load(file)
        kind = info.get("type") if isinstance(info, dict) else None
        if kind == "service_account":
            return service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
        if kind == "authorized_user":
            return user.Credentials.from_authorized_user_info(info, scopes=list(SCOPES))
    except (exceptions.GoogleAuthError, OSError, ValueError) as exc:
        logger.warning("Vertex AI credentials file %s: %s", settings.credentials_file, exc)
    else:
        logger.warning("Vertex AI credentials file %s: type %r", settings.credentials_file, kind)
    raise BackendError(
        f"Vertex AI: the credentials file that {source} names cannot be read as Google Cloud credentials "
        "(a service-account JSON key, or gcloud's application_default_credentials.json; the server's log "
        "says why); point it at one, or unset it and run 'gcloud auth application-default login'"
    )
