from __future__ import annotations

from pathlib import Path

import pytest

from multimodal_mcp.config import ConfigError, load_config


def _load(tmp_path: Path, text: str | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    config_file = None
    if text is not None:
        config_file = tmp_path / "c.toml"
        config_file.write_text(text)
    return load_config(config_file=config_file, cache_dir=tmp_path / "cache", home=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_the_default_profile_names_the_real_checkpoints(tmp_path: Path) -> None:
    config = _load(tmp_path)
    assert config.profile == "default"
    assert config.models["sdxl"].source == "stabilityai/stable-diffusion-xl-base-1.0"
    sdxl = config.models["sdxl"].defaults
    assert (sdxl.steps, sdxl.guidance_scale, sdxl.width, sdxl.scheduler) == (30, 7.5, 1024, "dpm++")
    flux = config.models["flux-schnell"].defaults
    assert (flux.steps, flux.guidance_scale) == (4, 0.0)
    assert config.defaults["clip"] == "clip-vit-l-14"
    assert config.server.store_dir == tmp_path / "cache" / "images"


def test_a_toml_file_adds_models_sets_defaults_and_expands_home(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """
profile = "tiny"
[server]
store_dir = "~/imgs"
allowed_roots = ["~/pictures"]
preview_format = "webp"
[models.my-sd]
task = "text_to_image"
backend = "diffusers"
source = "/models/my-sd"
defaults = { steps = 12 }
[defaults]
text_to_image = "my-sd"
""",
    )
    assert config.profile == "tiny" and "tiny-sd15" in config.models
    assert config.defaults["text_to_image"] == "my-sd" and config.models["my-sd"].defaults.steps == 12
    assert config.server.store_dir == tmp_path / "imgs"
    assert config.server.allowed_roots == (tmp_path / "pictures",)
    assert config.server.preview_format == "webp"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("surprise = 1", "unknown top-level keys ['surprise']"),
        ("[defaults]\nclip = 'tiny-sd15'", "defaults.clip names 'tiny-sd15', whose task is 'text_to_image'"),
        (
            "[models.cn]\ntask='controlnet'\nbackend='diffusers'\nsource='x'",
            "needs 'control_type' and 'base_models'",
        ),
        ("[server]\npreview_max_side = 10", "server.preview_max_side"),
        ("[models.x]\ntask='clip'\nbackend='diffusers'\nsource='s'\nsurprise=1", "models.x.surprise"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_invalid_configuration_is_reported_with_its_location(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        _load(tmp_path, "profile = 'tiny'\n" + text if not text.startswith("not") else text)
    assert message in str(info.value)


def test_an_unknown_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        _load(tmp_path, profile="huge")


def test_default_allowed_roots_cover_home_and_the_store_and_none_for_http(tmp_path: Path) -> None:
    stdio = _load(tmp_path, default_allowed_roots=[tmp_path])
    assert stdio.server.allowed_roots == (tmp_path, tmp_path / "cache" / "images")
    assert _load(tmp_path, default_allowed_roots=[]).server.allowed_roots == ()
    chosen = _load(tmp_path, '[server]\nallowed_roots = ["~/pictures"]', default_allowed_roots=[tmp_path])
    assert chosen.server.allowed_roots == (tmp_path / "pictures",)


def test_url_fetching_is_off_by_default_and_configured_under_server_urls(tmp_path: Path) -> None:
    assert _load(tmp_path).server.urls.enabled is False
    config = _load(
        tmp_path,
        "[server.urls]\nenabled = true\nmax_bytes = 2048\ntimeout_seconds = 5\nmax_redirects = 2\n"
        'allow_networks = ["127.0.0.1/32"]',
    )
    urls = config.server.urls
    assert (urls.enabled, urls.max_bytes, urls.timeout_seconds, urls.max_redirects) == (True, 2048, 5, 2)
    assert urls.allow_networks == ("127.0.0.1/32",)
    with pytest.raises(ConfigError, match=r"server\.urls\.allow_networks"):
        _load(tmp_path, '[server.urls]\nallow_networks = ["10.0.0.0/33"]')
    with pytest.raises(ConfigError, match=r"server\.urls\.max_redirects"):
        _load(tmp_path, "[server.urls]\nmax_redirects = 50")


def test_store_retention_has_bounded_defaults_and_zero_means_no_limit(tmp_path: Path) -> None:
    store = _load(tmp_path).server.store
    assert (store.byte_limit, store.max_age_seconds) == (10 * 1024**3, 30 * 86400)
    config = _load(
        tmp_path,
        '[server]\nstore_dir = "~/imgs"\n[server.store]\nmax_bytes = 0\nmax_age_days = 7\nsweep_seconds = 60',
    )
    assert config.server.store_dir == tmp_path / "imgs"  # server.store_dir keeps naming the directory
    assert (config.server.store.byte_limit, config.server.store.max_age_seconds) == (None, 7 * 86400)
    assert _load(tmp_path, "[server.store]\nmax_age_days = 0").server.store.max_age_seconds is None
    with pytest.raises(ConfigError, match=r"server\.store\.max_bytes"):
        _load(tmp_path, "[server.store]\nmax_bytes = -1")
    with pytest.raises(ConfigError, match=r"server\.store\.dir"):
        _load(tmp_path, '[server.store]\ndir = "/x"')


def test_prompt_rewriting_has_a_text_model_in_both_profiles(tmp_path: Path) -> None:
    default = _load(tmp_path)
    rewriter = default.models[default.defaults["prompt_rewrite"]]
    assert (rewriter.task, rewriter.source) == ("text", "Qwen/Qwen2.5-1.5B-Instruct")
    tiny = _load(tmp_path, profile="tiny")
    assert tiny.models[tiny.defaults["prompt_rewrite"]].source == "tiny:text"
    with pytest.raises(ConfigError, match=r"prompt_rewrite names 'tiny-clip', whose task is 'clip'"):
        _load(tmp_path, "profile = 'tiny'\n[defaults]\nprompt_rewrite = 'tiny-clip'")


def test_hosted_models_are_paid_unless_the_config_says_otherwise(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """
profile = "tiny"
[server.spending]
confirm = "ask"
default_without_elicitation = "deny"
[models.hosted]
task = "text"
backend = "openai"
source = "gpt-4o-mini"
[models.free-hosted]
task = "text"
backend = "gemini"
source = "gemini-2.5-flash"
paid = false
[models.metered-local]
task = "text_to_image"
backend = "diffusers"
source = "/models/x"
paid = true
""",
    )
    paid = {name: spec.is_paid for name, spec in config.models.items()}
    assert paid["hosted"] and paid["metered-local"]
    assert not paid["free-hosted"] and not paid["tiny-sd15"] and not paid["tiny-text"]
    assert config.server.spending.default_without_elicitation == "deny"
    with pytest.raises(ConfigError, match=r"server\.spending\.confirm"):
        _load(tmp_path, "profile = 'tiny'\n[server.spending]\nconfirm = 'maybe'")


def test_hosted_keys_come_from_the_given_environment_and_never_show(tmp_path: Path) -> None:
    config = _load(tmp_path, environ={"OPENAI_API_KEY": "sk-live-secret", "GOOGLE_API_KEY": "g-secret"})
    openai, gemini = config.hosted.for_backend("openai"), config.hosted.for_backend("gemini")
    assert openai.api_key is not None and openai.api_key.get_secret_value() == "sk-live-secret"
    assert (openai.key_from, gemini.key_from) == ("OPENAI_API_KEY", "GOOGLE_API_KEY")  # the fallback
    for shown in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
        assert "sk-live-secret" not in shown and "g-secret" not in shown
    assert config.models["gpt-image-1"].hosted and config.models["gemini-2.5-flash"].task == "vlm"
    assert not config.models["sdxl"].hosted
    unset = _load(tmp_path)
    assert (
        unset.hosted.for_backend("openai").api_key is None
        and unset.hosted.for_backend("openai").key_from is None
    )


def test_hosted_settings_come_from_the_file(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        """
[hosted.openai]
api_key = "sk-from-file"
base_url = "http://127.0.0.1:9/v1"
timeout_seconds = 5
max_retries = 0
max_concurrency = 2
[hosted.gemini]
api_key_env = "MY_GEMINI"
""",
        environ={"OPENAI_API_KEY": "sk-env", "MY_GEMINI": "gm", "GEMINI_API_KEY": "other"},
    )
    openai = config.hosted.for_backend("openai")
    assert openai.key_from == "config file" and openai.api_key.get_secret_value() == "sk-from-file"  # type: ignore[union-attr]
    assert (openai.base_url, openai.timeout_seconds, openai.max_retries, openai.max_concurrency) == (
        "http://127.0.0.1:9/v1",
        5,
        0,
        2,
    )
    assert config.hosted.for_backend("gemini").key_from == "MY_GEMINI"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hosted.mistral]\nbase_url = 'x'", "unknown [hosted] tables ['mistral']"),
        ("[hosted.openai]\nkey_from = 'x'", "hosted.openai.key_from is set by the server"),
        ("[hosted.openai]\ntimeout_seconds = 0", "hosted.openai.timeout_seconds"),
        ("[models.x]\ntask='clip'\nbackend='openai'\nsource='s'", "a openai model's task must be one of"),
    ],
)
def test_invalid_hosted_configuration_is_reported(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text, environ={"OPENAI_API_KEY": "sk-never-echoed"})
    assert message in str(info.value) and "sk-never-echoed" not in str(info.value)


@pytest.mark.parametrize(
    ("gpu", "environ", "image_model", "vlm", "reason"),
    [
        (
            True,
            {"OPENAI_API_KEY": "k"},
            "sdxl",
            "llava-1.6-mistral-7b",
            "CUDA GPU found -> local 'default' models",
        ),
        (
            False,
            {"OPENAI_API_KEY": "k"},
            "gpt-image-2",
            "gpt-4o",
            "no CUDA GPU found; OPENAI_API_KEY set -> hosted OpenAI models (gpt-image-2, gpt-4o) for "
            "generate_image, describe_image",
        ),
        (
            False,
            {"GEMINI_API_KEY": "k"},
            "gemini-2.5-flash-image",
            "gemini-2.5-flash",
            "GEMINI_API_KEY set -> hosted Gemini models",
        ),
        (
            False,
            {"ANTHROPIC_API_KEY": "k"},
            "tiny-sd15",
            "claude-sonnet-5-5",
            "ANTHROPIC_API_KEY set -> hosted Anthropic models (claude-sonnet-5-5) for describe_image and "
            "compare_images(describe=True); claude-haiku-5-5 rewrites prompts",
        ),
        (
            False,
            {},
            "tiny-sd15",
            "tiny-vlm",
            "no OPENAI_API_KEY, GEMINI_API_KEY, GOOGLE_API_KEY or ANTHROPIC_API_KEY set -> 'tiny'",
        ),
    ],
)
def test_the_auto_profile_picks_local_hosted_or_tiny_and_says_why(
    tmp_path: Path, gpu: bool, environ: dict[str, str], image_model: str, vlm: str, reason: str
) -> None:
    config = _load(tmp_path, profile="auto", environ=environ, gpu_probe=lambda: gpu)
    assert config.profile == "auto"
    assert (config.defaults["text_to_image"], config.defaults["vlm"]) == (image_model, vlm)
    assert any(reason in line for line in config.profile_reasons), config.profile_reasons
