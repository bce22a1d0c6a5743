"""The tiny random-weight models load through the real ``from_pretrained`` paths and run end to end on CPU."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from multimodal_mcp.backends import tiny
from multimodal_mcp.backends.tiny import (
    TINY_BUILD_VERSION,
    TINY_MODEL_DIRS,
    build_tiny_model,
    build_tiny_models,
    ensure_tiny_models,
)
from multimodal_mcp.backends.tiny_transformers import CLIP_IMAGE_SIZE, VLM_IMAGE_TOKENS

PROMPT = "a cat"
NEGATIVE = "blurry"
STEPS = 2
FLUX_MAX_SEQUENCE_LENGTH = 32


@pytest.fixture(scope="module")
def root(tiny_dir: Path) -> Path:
    """The session's build (tests/conftest.py: ensure_tiny_models into a fresh temporary directory),
    read here, never written: building a second set only to look at it cost a build per run."""
    return tiny_dir


def _load_text2image(path: Path) -> Any:
    import diffusers
    import torch

    pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
        path, torch_dtype=torch.float32, use_safetensors=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd15(root: Path) -> Any:
    return _load_text2image(root / TINY_MODEL_DIRS["sd15"])


@pytest.fixture(scope="module")
def sdxl(root: Path) -> Any:
    return _load_text2image(root / TINY_MODEL_DIRS["sdxl"])


@pytest.fixture(scope="module")
def flux(root: Path) -> Any:
    return _load_text2image(root / TINY_MODEL_DIRS["flux"])


def _generator() -> Any:
    import torch

    return torch.Generator("cpu").manual_seed(0)


def _sd_call(pipe: Any, width: int = 64, height: int = 64) -> Image.Image:
    result = pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        width=width,
        height=height,
        generator=_generator(),
        output_type="pil",
    )
    return result.images[0]


def _flux_call(pipe: Any, width: int = 64, height: int = 64) -> Image.Image:
    result = pipe(
        prompt=PROMPT,
        num_inference_steps=STEPS,
        guidance_scale=0.0,
        width=width,
        height=height,
        max_sequence_length=FLUX_MAX_SEQUENCE_LENGTH,
        generator=_generator(),
        output_type="pil",
    )
    return result.images[0]


def _digest(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def _weight_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.safetensors"))}


def _edge_map() -> Image.Image:
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), outline=(255, 255, 255))
    return image


def _features(output: Any) -> Any:
    import torch

    # transformers 5 returns a model output whose pooler_output holds the projected embedding.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# Build layout -------------------------------------------------------------------------------------------


def test_build_records_current_version_and_creates_every_model_directory(root: Path) -> None:
    info = json.loads((root / "BUILD_INFO.json").read_text())
    assert info["version"] == TINY_BUILD_VERSION
    for subdir in TINY_MODEL_DIRS.values():
        assert (root / subdir).is_dir()


def test_build_writes_only_safetensors_weights(root: Path) -> None:
    pickled = [p for suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl") for p in root.rglob(f"*{suffix}")]
    assert pickled == []
    for subdir in TINY_MODEL_DIRS.values():
        assert list((root / subdir).rglob("*.safetensors")), subdir


def test_build_stays_tiny_on_disk(root: Path) -> None:
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 30 * 1024 * 1024


# Diffusion pipelines ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(64, 64), (96, 64), (32, 40)])
def test_sd15_pipeline_loads_from_pretrained_and_generates_requested_size(
    sd15: Any, width: int, height: int
) -> None:
    assert type(sd15).__name__ == "StableDiffusionPipeline"
    image = _sd_call(sd15, width, height)
    assert isinstance(image, Image.Image)
    assert image.size == (width, height)


def test_sd15_pipeline_gives_identical_images_for_the_same_generator_seed(sd15: Any) -> None:
    assert _digest(_sd_call(sd15)) == _digest(_sd_call(sd15))


@pytest.mark.parametrize(("width", "height"), [(64, 64), (96, 64)])
def test_sdxl_pipeline_loads_from_pretrained_and_generates_requested_size(
    sdxl: Any, width: int, height: int
) -> None:
    assert type(sdxl).__name__ == "StableDiffusionXLPipeline"
    image = _sd_call(sdxl, width, height)
    assert image.size == (width, height)


def test_sdxl_pipeline_gives_identical_images_for_the_same_generator_seed(sdxl: Any) -> None:
    assert _digest(_sd_call(sdxl)) == _digest(_sd_call(sdxl))


@pytest.mark.parametrize(("width", "height"), [(64, 64), (96, 64)])
def test_flux_pipeline_loads_from_pretrained_and_generates_requested_size(
    flux: Any, width: int, height: int
) -> None:
    assert type(flux).__name__ == "FluxPipeline"
    image = _flux_call(flux, width, height)
    assert image.size == (width, height)


def test_flux_pipeline_gives_identical_images_for_the_same_generator_seed(flux: Any) -> None:
    assert _digest(_flux_call(flux)) == _digest(_flux_call(flux))


def test_controlnet_loads_and_steers_the_sd15_pipeline(root: Path, sd15: Any) -> None:
    import diffusers

    controlnet = diffusers.ControlNetModel.from_pretrained(
        root / TINY_MODEL_DIRS["controlnet-canny-sd15"], use_safetensors=True
    )
    pipe = diffusers.StableDiffusionControlNetPipeline(
        **sd15.components, controlnet=controlnet, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)

    def call(condition: Image.Image) -> Image.Image:
        result = pipe(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            image=condition,
            controlnet_conditioning_scale=0.8,
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            width=64,
            height=64,
            generator=_generator(),
            output_type="pil",
        )
        return result.images[0]

    edges = call(_edge_map())
    assert edges.size == (64, 64)
    assert _digest(edges) == _digest(call(_edge_map()))
    assert _digest(edges) != _digest(call(Image.new("RGB", (64, 64))))


# CLIP and VLM -------------------------------------------------------------------------------------------


def test_clip_model_scores_every_text_against_the_image(root: Path) -> None:
    import torch
    import transformers

    model = transformers.CLIPModel.from_pretrained(root / TINY_MODEL_DIRS["clip"])
    processor = transformers.AutoProcessor.from_pretrained(root / TINY_MODEL_DIRS["clip"])
    image = Image.new("RGB", (123, 77), (200, 10, 30))
    inputs = processor(
        text=["a photo of a cat", "a photo of a dog"], images=[image], return_tensors="pt", padding=True
    )
    assert inputs["pixel_values"].shape == (1, 3, CLIP_IMAGE_SIZE, CLIP_IMAGE_SIZE)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
        image_features = _features(model.get_image_features(pixel_values=inputs["pixel_values"]))
        text_features = _features(
            model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        )
    assert logits.shape == (1, 2)
    assert torch.isfinite(logits).all()
    assert image_features.shape == (1, model.config.projection_dim)
    assert text_features.shape == (2, model.config.projection_dim)


@pytest.fixture(scope="module")
def vlm(root: Path) -> tuple[Any, Any]:
    import transformers

    path = root / TINY_MODEL_DIRS["vlm"]
    return (
        transformers.AutoModelForImageTextToText.from_pretrained(path),
        transformers.AutoProcessor.from_pretrained(path),
    )


def _vlm_prompt(processor: Any) -> str:
    conversation = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}
    ]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def test_vlm_chat_template_places_the_image_token_in_the_prompt(vlm: tuple[Any, Any]) -> None:
    _, processor = vlm
    prompt = _vlm_prompt(processor)
    assert isinstance(prompt, str)
    assert "<image>" in prompt
    assert "Describe this image." in prompt


def test_vlm_processor_inserts_as_many_image_tokens_as_the_model_expects(vlm: tuple[Any, Any]) -> None:
    import torch

    model, processor = vlm
    inputs = processor(images=Image.new("RGB", (50, 90)), text=_vlm_prompt(processor), return_tensors="pt")
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == VLM_IMAGE_TOKENS == model.config.image_seq_length
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape


def test_vlm_generates_printable_text_deterministically(vlm: tuple[Any, Any]) -> None:
    model, processor = vlm
    image = Image.new("RGB", (64, 48), (10, 120, 200))

    def generate() -> str:
        inputs = processor(images=image, text=_vlm_prompt(processor), return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1] :]
        assert 0 < len(new_tokens) <= 8
        return processor.decode(new_tokens, skip_special_tokens=True)

    text = generate()
    assert isinstance(text, str)
    assert all(char.isprintable() or char.isspace() for char in text)
    assert text == generate()


# Building and caching -----------------------------------------------------------------------------------


def test_rebuilding_a_model_gives_byte_identical_weights(root: Path, tmp_path: Path, capfd: Any) -> None:
    rebuilt = build_tiny_model("sd15", tmp_path / "sd15")
    assert _weight_bytes(rebuilt) == _weight_bytes(root / TINY_MODEL_DIRS["sd15"])
    # stdout belongs to the MCP stdio transport; building must not write to it.
    assert capfd.readouterr().out == ""


@pytest.mark.model
def test_building_a_model_leaves_the_global_torch_rng_untouched(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    build_tiny_model("clip", tmp_path / "clip")
    assert torch.equal(torch.rand(4), expected)


def test_ensure_tiny_models_reuses_a_current_build_without_rebuilding(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weight = root / "sd15" / "unet" / "diffusion_pytorch_model.safetensors"
    before = weight.stat()

    def fail(_: Path) -> Path:
        raise AssertionError("a current build must not be rebuilt")

    monkeypatch.setattr(tiny, "build_tiny_models", fail)
    assert ensure_tiny_models(root) == root
    after = weight.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _fake_builder(calls: list[Path]) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        calls.append(root)
        root.mkdir(parents=True, exist_ok=True)
        (root / "BUILD_INFO.json").write_text(json.dumps({"version": TINY_BUILD_VERSION}))
        return root

    return build


def test_ensure_tiny_models_rebuilds_a_stale_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "BUILD_INFO.json").write_text(json.dumps({"version": TINY_BUILD_VERSION + "-old"}))
    calls: list[Path] = []
    monkeypatch.setattr(tiny, "build_tiny_models", _fake_builder(calls))
    assert ensure_tiny_models(root) == root
    assert calls == [root]


def test_ensure_tiny_models_builds_once_when_called_concurrently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    calls: list[Path] = []
    build = _fake_builder(calls)
    started = threading.Barrier(4)

    def slow_build(path: Path) -> Path:
        threading.Event().wait(0.2)  # keep the lock held while the other callers queue up
        return build(path)

    monkeypatch.setattr(tiny, "build_tiny_models", slow_build)
    results: list[Path] = []

    def worker() -> None:
        started.wait()
        results.append(ensure_tiny_models(root))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [root] * 4
    assert calls == [root]


@pytest.mark.model  # build_tiny_models imports torch, diffusers and transformers before it checks
def test_build_refuses_to_replace_a_directory_holding_other_files(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        build_tiny_models(root)
    assert (root / "notes.txt").exists()
