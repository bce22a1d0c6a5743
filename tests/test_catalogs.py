"""The built-in catalogs are data: config files read like the user's, printable as a starting config,
the only place the built-in model names live; and the ``auto`` profile picks from its rules' data."""

from __future__ import annotations

import ast
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from multimodal_mcp import catalogs, cli, config
from multimodal_mcp.catalogs import AutoRules
from multimodal_mcp.cli import main
from multimodal_mcp.config import Config, ConfigError, as_toml, load_config

SHIPPED = ("default", "tiny", "hosted")
NO_KEYS = {"OPENAI_API_KEY": "", "GEMINI_API_KEY": "", "GOOGLE_API_KEY": ""}


def _load(tmp_path: Path, **kwargs: object) -> Config:
    return load_config(cache_dir=tmp_path / "cache", home=tmp_path, **kwargs)  # type: ignore[arg-type]


def _catalog(name: str) -> dict[str, dict]:  # type: ignore[type-arg]
    return tomllib.loads(catalogs.text(name))


def _hosted_backends() -> list[str]:
    return list(dict.fromkeys(spec["backend"] for spec in _catalog("hosted")["models"].values()))


def _key_variables(tmp_path: Path, backend: str) -> list[str]:
    settings = _load(tmp_path).hosted.for_backend(backend)
    return [settings.api_key_env, *settings.api_key_env_fallbacks]


@pytest.mark.parametrize(
    ("profile", "environ", "gpu"),
    [
        ("default", {}, False),
        ("tiny", {}, False),
        ("auto", {}, False),
        ("auto", {"GEMINI_API_KEY": "k"}, False),
        ("auto", {"OPENAI_API_KEY": "k", "GOOGLE_API_KEY": "k"}, False),
        ("auto", {"OPENAI_API_KEY": "k"}, True),
    ],
)
def test_every_built_in_profile_prints_as_a_config_file_that_loads_back_to_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    profile: str,
    environ: dict[str, str],
    gpu: bool,
) -> None:
    for variable, value in {**NO_KEYS, **environ}.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("MULTIMODAL_MCP_CONFIG", raising=False)
    monkeypatch.setattr(cli, "_cuda_available", lambda: gpu)
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--profile", profile, "--as-toml"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    tomllib.loads(printed)  # valid TOML, nothing else on stdout

    shown = _load(tmp_path, profile=profile, environ={**NO_KEYS, **environ}, gpu_probe=lambda: gpu)
    path = tmp_path / "start.toml"
    path.write_text(printed)
    loaded = _load(tmp_path, config_file=path)  # no profile, no keys, no GPU: the file says it all
    assert list(loaded.models) == list(shown.models)
    assert loaded.models == shown.models
    assert loaded.defaults == shown.defaults
    for reason in shown.profile_reasons:
        assert f"# auto: {reason}\n" in printed


def test_a_printed_config_keeps_what_the_user_added_exactly(tmp_path: Path) -> None:
    user = tmp_path / "user.toml"
    user.write_text(
        'profile = "tiny"\n'
        '[models."odd.name_v2"]\n'
        'task = "text_to_image"\nbackend = "diffusers"\nsource = "/models/x"\n'
        'description = "quote \\" backslash \\\\ tab \\t newline \\n del \\u007F snow \\u2603 \\U0001F600"\n'
        "paid = true\n"
        'defaults = { steps = 3, guidance_scale = 1e-3, scheduler = "euler" }\n'
        "pipeline_kwargs = { strength = 0.5, flag = false, label = 'a=b' }\n"
        '[defaults]\ntext_to_image = "odd.name_v2"\n'
    )
    shown = _load(tmp_path, config_file=user)
    printed = tmp_path / "printed.toml"
    printed.write_text(as_toml(shown))
    loaded = _load(tmp_path, config_file=printed)
    assert loaded.models == shown.models and loaded.defaults == shown.defaults
    assert loaded.models["odd.name_v2"].description.endswith("del \x7f snow \u2603 \U0001f600")


def test_the_catalogs_are_config_files_read_by_the_users_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = resources.files(catalogs)
    for name in SHIPPED:
        path = tmp_path / f"{name}.toml"
        path.write_text(package.joinpath(f"{name}.toml").read_text(encoding="utf-8"))
        as_users = _load(tmp_path, config_file=path, profile="tiny")
        assert set(_catalog(name)["models"]) <= set(as_users.models)
    # A broken catalog fails like a broken user file, through the same reader and the same checks.
    monkeypatch.setattr(catalogs, "text", lambda name: "surprise = 1\n")
    with pytest.raises(
        ConfigError, match=r"built-in catalog tiny\.toml: unknown top-level keys \['surprise'\]"
    ):
        _load(tmp_path, profile="tiny")
    monkeypatch.setattr(
        catalogs,
        "text",
        lambda name: "[models.x]\ntask = 'clip'\nbackend = 'diffusers'\nsource = 's'\nnope = 1\n",
    )
    with pytest.raises(ConfigError, match=r"profile 'tiny'.*models\.x\.nope"):
        _load(tmp_path, profile="tiny")


def _code_strings(path: Path, skip: frozenset[str] = frozenset()) -> list[str]:
    """Every string constant in a module's code, outside the top-level definitions named in skip."""
    strings = []
    for node in ast.parse(path.read_text()).body:
        named = {getattr(node, "name", None)} | {
            getattr(t, "id", None) for t in getattr(node, "targets", [getattr(node, "target", None)])
        }
        if named & skip:
            continue
        strings += [
            n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
    return strings


# ModelSpec's field descriptions name the built-in backends for users reading the schema.
_PROVIDER_PLUMBING = frozenset({"ModelSpec"})


def test_the_catalogs_are_the_only_place_the_built_in_models_and_providers_are_named(tmp_path: Path) -> None:
    package = Path(catalogs.__file__).parent
    models = {name: spec for catalog in SHIPPED for name, spec in _catalog(catalog)["models"].items()}
    model_words = set(models) | {spec["source"] for spec in models.values()}
    backends = _hosted_backends()
    provider_words = {*backends, "gpt-", *(v for b in backends for v in _key_variables(tmp_path, b))}
    modules = {
        "config.py": _code_strings(Path(config.__file__), _PROVIDER_PLUMBING),
        "cli.py": _code_strings(Path(cli.__file__)),
        "catalogs/__init__.py": _code_strings(package / "__init__.py"),
    }
    for module, strings in modules.items():
        found = {w for w in model_words for s in strings if w in s}
        assert not found, f"{module} names built-in models {sorted(found)}"
        if module != "cli.py":  # (the CLI quiets the providers' SDK loggers by name)
            found = {w for w in provider_words for s in strings if w.lower() in s.lower()}
            assert not found, f"{module} names providers {sorted(found)}"
    rules = tomllib.loads(catalogs.text("auto"))
    named = [n for names in rules["prefer"].values() for n in names]
    assert set(named) <= set(_catalog("hosted")["models"]), "the rules choose among hosted.toml's models"


@pytest.mark.parametrize("backend", _hosted_backends())
def test_with_one_providers_key_auto_offers_only_that_providers_models(tmp_path: Path, backend: str) -> None:
    auto = _load(tmp_path, profile="auto", environ={_key_variables(tmp_path, backend)[0]: "k"})
    rules = catalogs.auto_rules()
    hosted = _catalog("hosted")["models"]
    others = {name for name, spec in hosted.items() if spec["backend"] != backend}
    assert not others & set(auto.models)
    said = " ".join(auto.profile_reasons)
    assert not [name for name in others if name in said], auto.profile_reasons
    tiny_defaults = _catalog("tiny")["defaults"]
    for key, names in rules.prefer.items():
        mine = [n for n in names if hosted[n]["backend"] == backend]
        assert auto.defaults[key] == (mine[0] if mine else tiny_defaults[key])  # type: ignore[index]


def test_with_only_a_gemini_key_nothing_suggests_an_openai_model(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable, value in {**NO_KEYS, "GEMINI_API_KEY": "g-secret"}.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.delenv("MULTIMODAL_MCP_CONFIG", raising=False)
    monkeypatch.setattr(cli, "_cuda_available", lambda: False)
    with pytest.raises(SystemExit):
        main(["models", "--profile", "auto"])
    out = capsys.readouterr().out
    assert "GEMINI_API_KEY set -> hosted Gemini models (gemini-2.5-flash-image, gemini-2.5-flash)" in out
    assert "gpt-" not in out and "dall-e" not in out and "g-secret" not in out


REORDERED = """
[prefer]
text_to_image = ["gemini-2.5-flash-image", "gpt-image-2"]
vlm = ["gpt-4o", "gemini-2.5-flash"]
[providers]
gemini = "Gemini"
"""


def test_auto_picks_per_key_in_the_order_the_rules_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = {"OPENAI_API_KEY": "k", "GEMINI_API_KEY": "k"}
    shipped = _load(tmp_path, profile="auto", environ=both)
    assert (shipped.defaults["text_to_image"], shipped.defaults["vlm"]) == ("gpt-image-2", "gpt-4o")

    monkeypatch.setattr(catalogs, "auto_rules", lambda: AutoRules.from_toml(REORDERED))
    auto = _load(tmp_path, profile="auto", environ=both)
    assert (auto.defaults["text_to_image"], auto.defaults["vlm"]) == ("gemini-2.5-flash-image", "gpt-4o")
    assert auto.defaults["prompt_rewrite"] == "tiny-text", "a key the rules leave out keeps its tiny model"
    assert auto.profile_reasons[0] == (
        "no CUDA GPU found; GEMINI_API_KEY set -> hosted Gemini models (gemini-2.5-flash-image) for "
        "generate_image; OPENAI_API_KEY set -> hosted openai models (gpt-4o) for describe_image and "
        "compare_images(describe=True)"
    ), "a provider the rules give no name is called by its backend"
    assert auto.profile_reasons[1] == (
        "controlled_generate, clip_classify, enhance_prompt, verify='thorough' and depth maps from photos "
        "have no hosted default -> 'tiny' models (random weights)"
    )
    only_openai = _load(tmp_path, profile="auto", environ={"OPENAI_API_KEY": "k"})
    assert only_openai.defaults["text_to_image"] == "gpt-image-2", "the next in the list whose key is set"


def test_auto_rules_that_name_a_missing_model_or_key_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalogs, "auto_rules", lambda: AutoRules.from_toml("[prefer]\nvlm = ['nope']"))
    with pytest.raises(ConfigError, match=r"the auto rules name \['nope'\]"):
        _load(tmp_path, profile="auto", environ={"OPENAI_API_KEY": "k"})
    with pytest.raises(ValueError, match=r"unknown \[defaults\] keys \['paint'\]"):
        AutoRules.from_toml("[prefer]\npaint = ['gpt-image-2']")
