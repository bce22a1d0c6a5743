"""Where weights come from: only the config names a source, only safetensors are loaded, and remote
code runs only where the config pins a commit."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from pydantic import ValidationError

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.backends.clip import load_clip
from multimodal_mcp.backends.diffusion import load_text_to_image
from multimodal_mcp.backends.sources import resolve_source
from multimodal_mcp.backends.tiny import TINY_MODEL_DIRS
from multimodal_mcp.config import ConfigError, ModelSpec, load_config
from multimodal_mcp.errors import BackendError

from helpers import call_error, call_ok, data_uri, photo

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _pickle_only_copy(source: Path, target: Path) -> Path:
    """A copy of a tiny model whose every .safetensors file is replaced by a pickled .bin."""
    import torch
    from safetensors.torch import load_file

    shutil.copytree(source, target)
    for weights in list(target.rglob("*.safetensors")):
        torch.save(load_file(str(weights)), weights.with_suffix(".bin"))
        weights.unlink()
    return target


def _spec(source: Path | str, task: str = "clip", backend: str = "transformers", **extra: Any) -> ModelSpec:
    return ModelSpec.model_validate({"task": task, "backend": backend, "source": str(source), **extra})


def test_a_model_directory_holding_only_pickle_weights_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    pickled = _pickle_only_copy(tiny_dir / TINY_MODEL_DIRS["clip"], tmp_path / "clip-bin")
    assert list(pickled.glob("*.bin")) and not list(pickled.rglob("*.safetensors"))
    with pytest.raises(BackendError, match=r"only pickle weights \(pytorch_model.bin|model.bin"):
        load_clip("bad-clip", _spec(pickled), LoadContext("cpu", tiny_dir))


def test_from_pretrained_itself_refuses_pickles_too(tiny_dir: Path, tmp_path: Path) -> None:
    # Defence in depth: even past the directory check, every loader asks for safetensors only.
    import transformers

    pickled = _pickle_only_copy(tiny_dir / TINY_MODEL_DIRS["clip"], tmp_path / "clip-bin")
    assert transformers.AutoModel.from_pretrained(tiny_dir / TINY_MODEL_DIRS["clip"], use_safetensors=True)
    with pytest.raises(OSError, match="safetensors"):
        transformers.AutoModel.from_pretrained(pickled, use_safetensors=True)


def test_a_pipeline_with_one_pickled_component_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    pipeline = tmp_path / "sd15"
    shutil.copytree(tiny_dir / TINY_MODEL_DIRS["sd15"], pipeline)
    _pickle_only_copy(pipeline / "unet", tmp_path / "unet-bin")
    shutil.rmtree(pipeline / "unet")
    shutil.move(tmp_path / "unet-bin", pipeline / "unet")
    spec = _spec(pipeline, task="text_to_image", backend="diffusers")
    with pytest.raises(BackendError, match="safetensors only"):
        load_text_to_image("bad-sd", spec, LoadContext("cpu", tiny_dir))


def test_remote_code_needs_a_pinned_commit_revision() -> None:
    with pytest.raises(ValidationError, match="40-hex commit"):
        _spec("org/model", trust_remote_code=True)
    with pytest.raises(ValidationError, match="40-hex commit"):
        _spec("org/model", trust_remote_code=True, revision="main")
    pinned = _spec("org/model", trust_remote_code=True, revision=COMMIT)
    assert pinned.trust_remote_code and pinned.revision == COMMIT
    assert _spec("org/model").trust_remote_code is False


def test_a_config_file_asking_for_remote_code_without_a_revision_is_an_error(tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(
        '[models.custom]\ntask = "vlm"\nbackend = "transformers"\nsource = "org/vlm"\n'
        "trust_remote_code = true\n"
    )
    with pytest.raises(ConfigError, match=r"models.custom: .*trust_remote_code = true .*40-hex commit"):
        load_config(config_file=config_file, cache_dir=tmp_path, home=tmp_path)


def test_ip_adapter_weights_must_be_safetensors() -> None:
    with pytest.raises(ValidationError, match=r"must be a \.safetensors file"):
        _spec(
            "h94/IP-Adapter",
            task="ip_adapter",
            backend="diffusers",
            base_models=["sd15"],
            weight_name="models/ip-adapter_sd15.bin",
            image_encoder="models/image_encoder",
        )


class _Spy:
    """Records every from_pretrained call (class, source, keyword arguments), then makes it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import diffusers
        import transformers

        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        for owner in (
            transformers.AutoModel,
            transformers.AutoModelForImageTextToText,
            transformers.AutoProcessor,
            diffusers.AutoPipelineForText2Image,
            diffusers.ControlNetModel,
        ):
            self._wrap(monkeypatch, owner)

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, owner: Any) -> None:
        real = owner.from_pretrained.__func__

        def spy(cls: Any, source: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls.append((owner.__name__, str(source), dict(kwargs)))
            return real(cls, source, *args, **kwargs)

        monkeypatch.setattr(owner, "from_pretrained", classmethod(spy))


async def test_only_configured_sources_reach_from_pretrained(
    client: Client, services: Any, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)
    image = data_uri(photo("astronaut", 32))
    hostile = [
        "../x",
        "../../etc/passwd",
        "hf-internal-testing/tiny-stable-diffusion-pipe",
        str(tiny_dir / TINY_MODEL_DIRS["sd15"]),  # an absolute path to real weights is still not a name
        "/tmp",
        "tiny:sd15",  # the source syntax, not a model name
        "tiny-sd15/../tiny-clip",
        "TINY-SD15",
    ]
    for name in hostile:
        for tool, args in (
            ("generate_image", {"prompt": "p", "model": name}),
            ("clip_classify", {"image": image, "labels": ["a", "b"], "model": name}),
            ("describe_image", {"image": image, "model": name}),
            ("compare_images", {"image_a": image, "image_b": image, "clip_model": name}),
            ("controlled_generate", {"prompt": "p", "control_image": image, "controlnet": name}),
        ):
            error = await call_error(client, tool, {**args})
            refused = ("no model named", "no ControlNet named", "at most 64 characters")
            assert any(reason in error for reason in refused), (tool, name, error)
    assert spy.calls == []

    # A real call loads only what the config names, with safetensors required and no remote code.
    await call_ok(client, "clip_classify", {"image": image, "labels": ["a cat", "a dog"]})
    configured = {resolve_source(spec.source, tiny_dir) for spec in services.config.models.values()}
    assert spy.calls and {source for _, source, _ in spy.calls} <= configured
    for owner, _, kwargs in spy.calls:
        assert kwargs.get("trust_remote_code", False) is False
        if owner != "AutoProcessor":
            assert kwargs["use_safetensors"] is True


def test_a_pinned_revision_and_remote_code_reach_the_loader(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)
    spec = _spec(tiny_dir / TINY_MODEL_DIRS["clip"], trust_remote_code=True, revision=COMMIT)
    load_clip("pinned", spec, LoadContext("cpu", tiny_dir))
    assert [
        (owner, kwargs.get("revision"), kwargs.get("trust_remote_code")) for owner, _, kwargs in spy.calls
    ] == [
        ("AutoModel", COMMIT, True),
        ("AutoProcessor", COMMIT, True),
    ]
