"""``multimodal-mcp pull`` and the missing-model check, offline: against a Hugging Face cache layout
built here, a Hub that is switched off (offline mode) or does not answer (a closed loopback port)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub import constants

from multimodal_mcp.backends.sources import require_downloadable
from multimodal_mcp.cli import main
from multimodal_mcp.config import Config, ConfigError, ModelSpec, load_config
from multimodal_mcp.errors import BackendError
from multimodal_mcp.pull import Download, check_space, hub_models, plan, presence, pull, wanted

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CONFIG = """
profile = "tiny"
[models.here]
task = "text_to_image"
backend = "diffusers"
source = "org/here"
[models.absent]
task = "text_to_image"
backend = "diffusers"
source = "org/absent"
"""


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache holding org/here (a tiny diffusers layout), set as the default cache."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--here"
    snapshot = repo / "snapshots" / COMMIT
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (snapshot / "unet" / "config.json").write_text("{}")
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # for the CLI run below, which reads the environment
    return cache


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return load_config(config_file=path, cache_dir=tmp_path / "cache", home=tmp_path)


def test_models_shows_which_hub_models_are_in_the_cache(
    hub_cache: Path, config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert presence(config) == {"here": True, "absent": False}
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--config", str(tmp_path / "config.toml")])
    assert exit_info.value.code == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line}
    assert rows["here"][-2:] == ["yes", "org/here"] and rows["absent"][-2:] == ["no", "org/absent"]
    assert rows["tiny-sd15"][-2] == "-"  # built in: nothing to download
    hint = " ".join(rows["not"])
    assert hint.startswith("not downloaded yet: absent; `multimodal-mcp pull --profile tiny`")


def test_a_missing_model_in_offline_mode_fails_at_once_naming_the_pull_command(
    hub_cache: Path, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    require_downloadable("here", config.models["here"], "org/here")  # cached: nothing to say
    start = time.monotonic()
    with pytest.raises(BackendError) as raised:
        require_downloadable("absent", config.models["absent"], "org/absent")
    assert time.monotonic() - start < 2
    message = str(raised.value)
    assert "model 'absent' (org/absent) is not in the Hugging Face cache" in message
    assert "offline mode is on" in message and "`multimodal-mcp pull absent`" in message


def test_a_missing_model_when_the_hub_does_not_answer_fails_within_seconds(
    hub_cache: Path, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a loopback port with nothing listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    start = time.monotonic()
    with pytest.raises(BackendError) as raised:
        require_downloadable("absent", config.models["absent"], "org/absent")
    assert time.monotonic() - start < 10
    assert "the Hub did not answer" in str(raised.value)
    assert "`multimodal-mcp pull absent`" in str(raised.value)


SD_REPO = [
    ("model_index.json", 600),
    ("v1-5-pruned.safetensors", 7_700_000_000),  # a single-file checkpoint the pipeline does not read
    ("unet/config.json", 700),
    ("unet/diffusion_pytorch_model.safetensors", 3_400_000_000),
    ("unet/diffusion_pytorch_model.fp16.safetensors", 1_700_000_000),
    ("unet/diffusion_pytorch_model.bin", 3_400_000_000),
    ("unet/diffusion_pytorch_model.non_ema.bin", 3_400_000_000),
    ("text_encoder/model.safetensors", 490_000_000),
    ("text_encoder/model.fp16.safetensors", 245_000_000),
    ("text_encoder/flax_model.msgpack", 490_000_000),
    ("tokenizer/vocab.json", 1_000_000),
    ("tokenizer/merges.txt", 500_000),
]


def _spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {"task": "text_to_image", "backend": "diffusers", "source": "o/r", **fields}
    )


@pytest.mark.parametrize(
    ("variant", "weights"),
    [
        (None, {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"}),
        ("fp16", {"unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/model.fp16.safetensors"}),
    ],
)
def test_pull_plans_the_safetensors_of_the_configured_variant_and_the_configs(
    variant: str | None, weights: set[str]
) -> None:
    asked: list[tuple[str, str | None]] = []

    def list_files(repo: str, revision: str | None) -> list[tuple[str, int]]:
        asked.append((repo, revision))
        return SD_REPO

    (download,) = plan([("sd", _spec(variant=variant, revision="v2"))], list_files)
    assert asked == [("o/r", "v2")] and (download.name, download.repo, download.revision) == (
        "sd",
        "o/r",
        "v2",
    )
    chosen = {path for path, _ in download.files}
    configs = {"model_index.json", "unet/config.json", "tokenizer/vocab.json", "tokenizer/merges.txt"}
    assert chosen == configs | weights
    assert download.size == sum(size for path, size in SD_REPO if path in chosen)


def test_pull_skips_the_single_file_checkpoint_and_text_encoders_of_an_sd3_repository() -> None:
    files = [
        "model_index.json",
        "sd3.5_medium.safetensors",
        "text_encoders/clip_g.safetensors",
        "text_encoders/t5xxl_fp16.safetensors",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder_3/config.json",
        "text_encoder_3/model-00001-of-00002.safetensors",
        "tokenizer_3/spiece.model",
    ]
    assert [f for f in files if wanted(f, _spec(), pipeline=True)] == [
        "model_index.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "text_encoder_3/config.json",
        "text_encoder_3/model-00001-of-00002.safetensors",
        "tokenizer_3/spiece.model",
    ]


def test_pull_takes_only_an_ip_adapters_weights_file_and_its_image_encoder() -> None:
    spec = _spec(
        task="ip_adapter",
        weight_name="models/ip-adapter_sd15.safetensors",
        image_encoder="models/image_encoder",
        base_models=("sd",),
    )
    files = [
        "models/ip-adapter_sd15.safetensors",
        "models/ip-adapter_sd15.bin",
        "models/ip-adapter-plus_sd15.safetensors",
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
        "sdxl_models/ip-adapter_sdxl.safetensors",
        "README.md",
    ]
    assert [f for f in files if wanted(f, spec, pipeline=False)] == [
        "models/ip-adapter_sd15.safetensors",
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
    ]


def test_pull_refuses_when_the_disk_has_not_enough_free_space(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    check_space(1, tmp_path / "not" / "yet" / "made")  # a cache folder that does not exist yet
    with pytest.raises(ConfigError) as raised:
        check_space(free + 10**12, tmp_path)
    assert "pull needs" in str(raised.value) and "HF_HOME" in str(raised.value)


def test_pull_downloads_only_what_the_cache_lacks(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: calls.append((repo, kw)))
    here = Download(
        "here", "org/here", None, (("model_index.json", 40), ("unet/diffusion_pytorch_model.safetensors", 64))
    )
    absent = Download("absent", "org/absent", "v1", (("model_index.json", 40), ("unet/x.safetensors", 10)))
    said: list[str] = []
    pull([here, absent], hub_cache, said.append)
    assert calls == [
        ("org/absent", {"revision": "v1", "allow_patterns": ["model_index.json", "unet/x.safetensors"]})
    ]
    assert said[0] == "here: org/here, 2 files, 0.00 GB (present)"
    assert said[1].startswith("absent: org/absent, 2 files") and said[-1].startswith("done: 2 model(s)")


def test_pull_names_unknown_models_and_skips_what_has_nothing_to_download(config: Config) -> None:
    assert [name for name, _ in hub_models(config)] == ["here", "absent"]
    with pytest.raises(ConfigError, match="no model named 'nope'"):
        hub_models(config, ["nope"])
    with pytest.raises(ConfigError, match="nothing to download"):
        hub_models(config, ["tiny-sd15"])


def test_pull_in_offline_mode_exits_2_saying_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.toml").write_text(CONFIG)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit) as exit_info:
        main(["pull", "--config", str(tmp_path / "config.toml"), "absent"])
    assert exit_info.value.code == 2
    assert "offline mode is on: unset HF_HUB_OFFLINE" in capsys.readouterr().err
