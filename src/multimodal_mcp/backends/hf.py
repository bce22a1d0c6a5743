"""What the transformers-based backends (CLIP, VLMs) share: holding a model and its processor,
and loading both from the configured source."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.backends.devices import module_bytes, pick_dtype
from multimodal_mcp.backends.sources import (
    load_error,
    pretrained_options,
    quiet_progress_bars,
    require_downloadable,
    require_safetensors,
    resolve_source,
)
from multimodal_mcp.capabilities import Capabilities
from multimodal_mcp.config import TINY_SOURCE_PREFIX, Config, ModelSpec
from multimodal_mcp.registry import LocalBackend

_NAMED_TYPES = ("qwen2_5_vl", "qwen2_vl", "siglip", "llava")
"""Architectures recognised in a hub id, most specific first."""
_TINY_TYPES = {"vlm": "llava", "qwen2-vl": "qwen2_vl", "clip": "clip", "siglip": "siglip"}
PREPROCESSOR_CONFIG = "preprocessor_config.json"
PROCESSOR_CONFIG = "processor_config.json"


def model_type(spec: ModelSpec) -> str:
    """A transformers model's architecture before loading it: ``model_type`` from the checkpoint's
    config.json when it is on disk, else read from the source's name (``Qwen/Qwen2.5-VL-7B-Instruct``
    gives qwen2_5_vl); "" when neither says."""
    source = spec.source
    if source.startswith(TINY_SOURCE_PREFIX):
        return _TINY_TYPES.get(source[len(TINY_SOURCE_PREFIX) :], "")
    config = Path(source) / "config.json"
    if config.is_file():
        try:
            return str(json.loads(config.read_text()).get("model_type", ""))
        except (OSError, ValueError):
            pass
    lowered = source.lower().replace(".", "_").replace("-", "_")
    for known in _NAMED_TYPES:
        if known in lowered:
            return known
    return ""


class TransformersModel:
    """A loaded transformers model and its processor, on one device."""

    def __init__(self, name: str, spec: ModelSpec, model: Any, processor: Any, device: str) -> None:
        self.name = name
        self.spec = spec
        self.model = model
        self.processor = processor
        self.device = device
        self._bytes = module_bytes([model])

    def memory_bytes(self) -> int:
        return self._bytes

    def fit(self, image: Image.Image) -> Image.Image:
        """``image`` cut to what the image processor keeps, and no larger than it needs.

        Processors that resize the short side to ``size["shortest_edge"]`` and then center-crop would
        first scale a thin image's long side up with it (a 1x10,000 strip becomes 224x2,240,000); the
        same center region is cut here first, and the image reduced to that size when it is larger,
        so the processor's own resize and crop have nothing left to do. Other processors (fixed
        ``height``/``width``, ``longest_edge``) never enlarge the long side; their input passes as is.
        """
        return fit_to_processor(image, getattr(self.processor, "image_processor", None))

    def move_to(self, device: str) -> None:
        """Move the weights (the pool offloads idle GPU models to CPU RAM and back)."""
        self.model.to(device)
        self.device = device


def load_pretrained(name: str, spec: ModelSpec, ctx: LoadContext, auto_class: str) -> tuple[Any, Any]:
    """``<auto_class>.from_pretrained`` and ``AutoProcessor.from_pretrained`` on the configured source."""
    import transformers

    source = resolve_source(spec.source, ctx.tiny_dir)
    require_safetensors(name, spec, source)
    require_downloadable(name, spec, source)
    quiet_progress_bars()
    options = pretrained_options(spec)
    remote = {"trust_remote_code": spec.trust_remote_code}
    revision = {"revision": spec.revision} if spec.revision else {}
    try:
        model = getattr(transformers, auto_class).from_pretrained(
            source, dtype=pick_dtype(spec.dtype, ctx.device, model=name), **{**options, **remote}
        )
        processor = transformers.AutoProcessor.from_pretrained(source, **revision, **remote)
    except Exception as exc:
        raise load_error(name, spec, exc) from exc
    return model.to(ctx.device).eval(), processor


class TransformersBackend(LocalBackend):
    """CLIP/SigLIP dual encoders, vision-language models (image-text-to-text), text chat models,
    zero-shot object detectors and depth estimators."""

    title = "transformers"
    tasks = frozenset({"clip", "vlm", "text", "detector", "depth"})

    def load(self, name: str, spec: ModelSpec, ctx: LoadContext) -> Any:
        if spec.task == "clip":
            from multimodal_mcp.backends.clip import load_clip

            return load_clip(name, spec, ctx)
        if spec.task == "vlm":
            from multimodal_mcp.backends.vlm import load_vlm

            return load_vlm(name, spec, ctx)
        if spec.task == "detector":
            from multimodal_mcp.backends.detector import load_detector

            return load_detector(name, spec, ctx)
        if spec.task == "depth":
            from multimodal_mcp.backends.depth import load_depth

            return load_depth(name, spec, ctx)
        from multimodal_mcp.backends.text import load_text

        return load_text(name, spec, ctx)

    def capabilities(self, name: str, spec: ModelSpec, config: Config) -> Capabilities:
        if spec.task == "clip":
            return Capabilities(sigmoid_scores="siglip" in (model_type(spec) or spec.source.lower()))
        if spec.task == "vlm":
            from multimodal_mcp.backends.vlm import images_per_question

            # One image per question for LLaVA, several for Qwen2-VL; answers as JSON by asking for it.
            # Yes/no questions are scored by the answer's likelihood (verify="thorough").
            return Capabilities(
                images_per_request=images_per_question(spec),
                structured_output="prompted",
                yes_probability=True,
            )
        return Capabilities()

    def image_side(self, name: str, spec: ModelSpec, config: Config) -> int | None:
        # CLIP and SigLIP take one side; of the VLMs only LLaVA 1.5 does (CLIP's processor at 336 px):
        # Qwen2-VL takes dynamic resolutions, LLaVA-NeXT tiles (its settings list grid pinpoints).
        if spec.task == "clip" or (spec.task == "vlm" and model_type(spec) == "llava"):
            return processor_image_side(spec, config.server.tiny_dir)
        return None


backend = TransformersBackend()


def processor_image_side(spec: ModelSpec, tiny_dir: Path) -> int | None:
    """The side from the checkpoint's image processor settings (``size``: ``shortest_edge``, or the
    larger of ``height`` and ``width``, or a bare number) in ``preprocessor_config.json``, or in
    ``processor_config.json`` as transformers 5 saves them, read from the source directory or the
    Hugging Face cache, never downloaded; None when neither is on disk or says a side, or when the
    processor tiles the image (``image_grid_pinpoints``: LLaVA-NeXT's any-resolution)."""
    for filename in (PREPROCESSOR_CONFIG, PROCESSOR_CONFIG):
        path = _local_file(spec, tiny_dir, filename)
        if path is None:
            continue
        try:
            settings = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(settings, dict) and isinstance(settings.get("image_processor"), dict):
            settings = settings["image_processor"]
        if not isinstance(settings, dict) or settings.get("image_grid_pinpoints"):
            return None  # not settings, or a processor that tiles (more pixels than one side)
        size = settings.get("size")
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            return size
        if isinstance(size, dict):
            named = (
                [size.get("shortest_edge")]
                if "shortest_edge" in size
                else [size.get("height"), size.get("width")]
            )
            sides = [side for side in named if isinstance(side, int) and side > 0]
            if sides and len(sides) == len(named):
                return max(sides)
    return None


def _local_file(spec: ModelSpec, tiny_dir: Path, filename: str) -> Path | None:
    """``filename`` of the model's checkpoint if it is on this machine (a tiny model's directory, a
    local directory, or the Hugging Face cache), else None."""
    source = spec.source
    if source.startswith(TINY_SOURCE_PREFIX):
        from multimodal_mcp.backends.tiny import TINY_MODEL_DIRS

        key = source[len(TINY_SOURCE_PREFIX) :]
        path = tiny_dir / TINY_MODEL_DIRS[key] / filename if key in TINY_MODEL_DIRS else None
    elif Path(source).is_dir():
        path = Path(source) / filename
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, filename, revision=spec.revision)
        except Exception:  # not a hub id, or no cache
            cached = None
        path = Path(cached) if isinstance(cached, str) else None
    return path if path is not None and path.is_file() else None


def fit_to_processor(image: Image.Image, image_processor: Any) -> Image.Image:
    """See :meth:`TransformersModel.fit`. ``image_processor``: a transformers image processor, or None."""
    size = getattr(image_processor, "size", None) or {}
    shortest = size.get("shortest_edge") if isinstance(size, dict) else None
    if not shortest:
        return image
    crop = getattr(image_processor, "crop_size", None) or {}
    if getattr(image_processor, "do_center_crop", False) and crop.get("width") and crop.get("height"):
        aspect = crop["width"] / crop["height"]
        width, height = image.size
        keep_w, keep_h = (min(width, round(height * aspect)), min(height, round(width / aspect)))
        left, top = (width - keep_w) // 2, (height - keep_h) // 2
        if (keep_w, keep_h) != image.size:
            image = image.crop((left, top, left + keep_w, top + keep_h))
    short = min(image.size)
    if short > shortest:
        scale = shortest / short
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.BICUBIC,
        )
    return image
