"""The built-in model catalogs, as data, and the ``auto`` profile's rules.

``default.toml``, ``tiny.toml`` and ``hosted.toml`` have the shape of a user's config file
(``[models.<name>]`` tables, ``[defaults]``) and are read by the code that reads the user's file (the
``read`` callables below are :mod:`multimodal_mcp.config`'s reader), so a built-in profile printed as
TOML (:func:`to_toml`, ``multimodal-mcp models --as-toml``) is a config file to start from.
``auto.toml`` holds the ``auto`` profile's policy (:class:`AutoRules`). The built-in model names, and
which provider serves them, are in these files only.

Only the standard library and pydantic are imported here: the CLI reads this module on every start.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator

if TYPE_CHECKING:
    from multimodal_mcp.config import HostedSettings

Spec = dict[str, Any]
Catalog = tuple[dict[str, Spec], dict[str, str]]
"""One catalog's ``[models]`` and ``[defaults]`` tables."""
Reader = Callable[[str], Catalog]
"""Reads the catalog of that name (``config.read_catalog``)."""

PROFILES: dict[str, tuple[str, ...]] = {"default": ("default", "hosted"), "tiny": ("tiny",)}
"""The built-in profiles and the catalogs each layers, later ones adding to earlier ones."""
PROFILE_CHOICES = ("auto", *PROFILES)
"""What ``--profile`` accepts: the built-in profiles and ``auto``, which picks between them."""

SERVES: dict[str, tuple[str, ...]] = {
    "text_to_image": ("generate_image",),
    "controlled": ("controlled_generate",),
    "clip": ("clip_classify",),
    "vlm": ("describe_image", "compare_images(describe=True)"),
    "prompt_rewrite": ("enhance_prompt",),
    "detector": ("verify='thorough'",),
    "depth": ("depth maps from photos",),
}
"""What the model of each ``[defaults]`` key serves: the words the ``auto`` profile's reasons use."""
_REWRITER = "prompt_rewrite"


@cache
def text(name: str) -> str:
    """The text of the built-in catalog ``<name>.toml`` (shipped inside the package)."""
    return resources.files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8")


def layered(read: Reader, names: Iterable[str]) -> Catalog:
    """The catalogs' models and defaults, each catalog adding to (or replacing) the ones before."""
    models: dict[str, Spec] = {}
    defaults: dict[str, str] = {}
    for name in names:
        more_models, more_defaults = read(name)
        models.update(more_models)
        defaults.update(more_defaults)
    return models, defaults


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ByName(_Frozen):
    """Hosted models a caller may name for a tool whose default stays local, and what they do there."""

    models: tuple[str, ...]
    purpose: str


class AutoRules(_Frozen):
    """``auto.toml``: which hosted model each ``[defaults]`` key gets when there is no GPU."""

    prefer: dict[str, tuple[str, ...]]
    """Per ``[defaults]`` key, hosted models, most preferred first: the first whose provider has a key
    is picked."""
    by_name: dict[str, ByName] = {}
    """Per ``[defaults]`` key left local: hosted models the reasons point to when their provider has a key."""
    providers: dict[str, str] = {}
    """How the reasons name each backend's provider (backend -> name)."""

    @field_validator("prefer", "by_name")
    @classmethod
    def _known_keys(cls, table: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(table) - set(SERVES))
        if unknown:
            raise ValueError(f"unknown [defaults] keys {unknown}; expected {', '.join(SERVES)}")
        return table

    @classmethod
    def from_toml(cls, text: str) -> AutoRules:
        return cls.model_validate(tomllib.loads(text))


@cache
def auto_rules() -> AutoRules:
    """The shipped rules (``auto.toml``)."""
    return AutoRules.from_toml(text("auto"))


def auto_profile(
    read: Reader, settings_for: Callable[[str], HostedSettings], has_gpu: bool
) -> tuple[dict[str, Spec], dict[str, str], tuple[str, ...]]:
    """The ``auto`` profile's models, defaults, and the reasons for them (the policy is in ``auto.toml``).

    ``settings_for(backend)`` gives a hosted backend's settings; only whether and where its key was
    found (``key_from``), the variables it is looked up in, and a Vertex AI project (``vertexai``,
    ``project``: calls through application default credentials) are read.

    Raises:
        ValueError: the rules name a model that ``hosted.toml`` does not have.
    """
    hosted, _ = read("hosted")
    backends = list(dict.fromkeys(spec["backend"] for spec in hosted.values()))
    keyed = {b: source for b in backends if (source := _credentials_source(b, settings_for(b))) is not None}
    if has_gpu:
        models, defaults = layered(read, PROFILES["default"])
        reasons = ["CUDA GPU found -> local 'default' models for every tool"]
        if keyed:
            reasons.append(f"{_join(keyed.values())} set -> hosted models also available by name (model=...)")
        return models, defaults, tuple(reasons)

    rules = auto_rules()
    named = [
        *(n for names in rules.prefer.values() for n in names),
        *(n for h in rules.by_name.values() for n in h.models),
    ]
    missing = sorted({n for n in named if n not in hosted})
    if missing:
        raise ValueError(f"the auto rules name {missing}, which are not models of hosted.toml")
    tiny_models, tiny_defaults = read("tiny")
    if not keyed:
        variables = _join(
            (
                v
                for b in backends
                for v in (settings_for(b).api_key_env, *settings_for(b).api_key_env_fallbacks)
            ),
            "or",
        )
        why = f"no {variables} set -> 'tiny' models (random weights: noise images, for trying things out)"
        return tiny_models, dict(tiny_defaults), (f"no CUDA GPU found; {why}",)

    def usable(names: Iterable[str]) -> str | None:
        return next((n for n in names if hosted[n]["backend"] in keyed), None)

    picks = {key: pick for key, names in rules.prefer.items() if (pick := usable(names)) is not None}
    reasons = [f"no CUDA GPU found; {_picked(rules, hosted, keyed, picks)}"]
    unpicked = [key for key in SERVES if key in tiny_defaults and key not in picks]
    if picks and unpicked:
        tools = [t for key in unpicked for t in SERVES[key]]
        hints = [
            f"pass model='{name}' to {_join(SERVES[key])} for {hint.purpose}"
            for key, hint in rules.by_name.items()
            if key in unpicked and (name := usable(hint.models)) is not None
        ]
        have = "have" if len(tools) > 1 else "has"
        tiny = f"{_join(tools)} {have} no hosted default -> 'tiny' models (random weights)"
        reasons.append("; ".join([tiny, *hints]))
    for backend in keyed:
        if not any(hosted[name]["backend"] == backend for name in picks.values()):
            names = ", ".join(f"'{n}'" for n, s in hosted.items() if s["backend"] == backend)
            label = rules.providers.get(backend, backend)
            reasons.append(f"{keyed[backend]} set -> hosted {label} models available by name (model={names})")
    models = {**tiny_models, **{n: s for n, s in hosted.items() if s["backend"] in keyed}}
    return models, {**tiny_defaults, **picks}, tuple(reasons)


def _picked(
    rules: AutoRules, hosted: Mapping[str, Spec], keyed: Mapping[str, str], picks: dict[str, str]
) -> str:
    """What was picked, per provider: '<variable> set -> hosted <provider> models (...) for <tools>'."""
    if not picks:
        return f"{_join(keyed.values())} set, but the auto rules prefer none of their models -> 'tiny' models"
    by_backend: dict[str, list[str]] = {}
    for key, name in picks.items():
        by_backend.setdefault(hosted[name]["backend"], []).append(key)
    parts = []
    for backend, keys in by_backend.items():
        label = rules.providers.get(backend, backend)
        tool_keys = [key for key in keys if key != _REWRITER]
        said = []
        if tool_keys:
            names = ", ".join(picks[key] for key in tool_keys)
            said.append(
                f"hosted {label} models ({names}) for {_join(t for k in tool_keys for t in SERVES[k])}"
            )
        if _REWRITER in keys:
            said.append(f"{picks[_REWRITER]} rewrites prompts ({_join(SERVES[_REWRITER])})")
        parts.append(f"{keyed[backend]} set -> {'; '.join(said)}")
    return "; ".join(parts)


def _key_source(backend: str, key_from: str | None) -> str:
    return f"[hosted.{backend}] api_key" if key_from == "config file" else str(key_from)


def _credentials_source(backend: str, settings: HostedSettings) -> str | None:
    """What lets ``backend`` make calls, for the reasons: where its key was found, or the project it
    reaches Vertex AI in with application default credentials; ``None`` when neither is set."""
    if settings.vertexai and settings.project is not None:
        return settings.set_from.get("project", f"[hosted.{backend}] project")
    return _key_source(backend, settings.key_from) if settings.key_from else None


def _join(items: Iterable[str], word: str = "and") -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"


# --- printing a profile as a config file -------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def to_toml(
    profile: str,
    models: Mapping[str, Mapping[str, Any]],
    defaults: Mapping[str, str],
    comments: Sequence[str] = (),
) -> str:
    """A config file that layers ``models`` and ``defaults`` on the built-in ``profile``.

    Values are TOML's: strings, booleans, numbers, lists and tables of them (``None`` has no TOML
    form: leave such keys out). The same shape as the catalogs, so ``load_config`` reads it back.
    """
    lines = [f"# {line}" if line else "#" for line in comments]
    lines += [f"profile = {_value(profile)}", "", "[defaults]"]
    lines += [f"{_key(key)} = {_value(name)}" for key, name in defaults.items()]
    for name, spec in models.items():
        lines += ["", f"[models.{_key(name)}]"]
        lines += [f"{_key(field)} = {_value(value)}" for field, value in spec.items()]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # floats keep their '.', 'e', 'inf' or 'nan': all TOML
    if isinstance(value, str):
        escaped = "".join(
            _ESCAPES.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in value
        )
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return f"[{', '.join(_value(v) for v in value)}]"
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
        )
    raise TypeError(f"{value!r} has no TOML form")
