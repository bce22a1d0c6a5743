"""Images reach a transformers processor cut to what it keeps: no thin image is scaled up first."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from multimodal_mcp.backends.hf import fit_to_processor, processor_image_side
from multimodal_mcp.config import ModelSpec

from helpers import photo

CLIP_LIKE = SimpleNamespace(
    size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True
)


def test_a_thin_strip_is_cut_to_the_region_the_processor_keeps() -> None:
    strip = Image.new("RGB", (10, 320), (0, 0, 0))
    strip.paste((255, 255, 255), (0, 155, 10, 165))  # the middle: what a center crop keeps
    fitted = fit_to_processor(strip, CLIP_LIKE)
    assert fitted.size == (10, 10)  # the processor then scales 10 px up to 224, not 320 to 7168
    assert np.asarray(fitted).min() == 255


def test_a_large_photo_is_reduced_to_the_processor_s_size() -> None:
    assert fit_to_processor(photo("astronaut", 512).resize((1024, 768)), CLIP_LIKE).size == (224, 224)
    squash = SimpleNamespace(size={"height": 224, "width": 224}, do_center_crop=False)
    wide = Image.new("RGB", (640, 20))
    assert fit_to_processor(wide, squash) is wide  # resized straight to 224x224: nothing to save


@pytest.mark.model
def test_the_fitted_image_gives_the_processor_s_own_result() -> None:
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    image = photo("chelsea", 96).resize((96, 64))
    direct = processor(images=[image], return_tensors="np")["pixel_values"]
    fitted = processor(images=[fit_to_processor(image, processor)], return_tensors="np")["pixel_values"]
    assert fitted.shape == direct.shape == (1, 3, 32, 32)
    assert np.abs(fitted - direct).mean() < 0.05  # same region, resampled once instead of twice


@pytest.mark.parametrize(
    ("filename", "settings", "side"),
    [
        ("preprocessor_config.json", {"size": {"shortest_edge": 336}}, 336),  # CLIP L/14-336
        ("preprocessor_config.json", {"size": {"height": 384, "width": 384}}, 384),  # SigLIP: squashed
        ("preprocessor_config.json", {"size": 224}, 224),  # older processors: a bare number
        # transformers 5 saves the image processor's settings inside processor_config.json
        ("processor_config.json", {"image_processor": {"size": {"shortest_edge": 224}}}, 224),
        ("preprocessor_config.json", {"size": {"longest_edge": 1024}}, None),  # no short side to say
        # LLaVA-NeXT tiles the image (any resolution): more pixels than its 336 px side
        ("preprocessor_config.json", {"size": {"shortest_edge": 336}, "image_grid_pinpoints": [[1]]}, None),
        ("preprocessor_config.json", "not settings", None),
    ],
)
def test_the_side_a_processor_takes_is_read_from_its_settings_before_loading(
    tmp_path: Path, filename: str, settings: object, side: int | None
) -> None:
    (tmp_path / filename).write_text(json.dumps(settings))
    spec = ModelSpec(task="clip", backend="transformers", source=str(tmp_path))
    assert processor_image_side(spec, tmp_path / "tiny") == side


def test_a_hub_model_not_downloaded_has_no_known_side(tmp_path: Path) -> None:
    spec = ModelSpec(task="clip", backend="transformers", source="openai/clip-vit-base-patch32-never-here")
    assert processor_image_side(spec, tmp_path) is None  # nothing is fetched to find out
