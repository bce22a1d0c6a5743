"""Diffusers pipelines: text to image and ControlNet-guided generation."""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any

from PIL import Image

from multimodal_mcp.backends import prompt_encoding
from multimodal_mcp.backends.base import (
    CancelToken,
    GenerationRequest,
    LoadContext,
    RequestNote,
    StepCallback,
)
from multimodal_mcp.backends.devices import module_bytes, pick_dtype
from multimodal_mcp.backends.lora import attached_loras, load_lora, loras_for
from multimodal_mcp.backends.prompt_window import Dropped, dropped_text
from multimodal_mcp.backends.schedulers import build_scheduler, check_scheduler, choices_for
from multimodal_mcp.backends.sources import (
    TINY_SOURCE_PREFIX,
    load_error,
    pretrained_options,
    quiet_progress_bars,
    require_downloadable,
    require_safetensors,
    resolve_source,
)
from multimodal_mcp.capabilities import Capabilities, SizeRule
from multimodal_mcp.config import Config, ModelSpec
from multimodal_mcp.errors import InvalidArgument, UnsupportedOperation
from multimodal_mcp.registry import LocalBackend

logger = logging.getLogger(__name__)

# Pipeline family -> the diffusers class that adds a ControlNet to it.
# (family, mode) -> the diffusers class for that mode, built over the loaded text-to-image
# pipeline's modules. Modes: control (ControlNet), img2img, inpaint, and ControlNet with either.
_PIPELINES: dict[tuple[str, str], str] = {
    ("sd", "control"): "StableDiffusionControlNetPipeline",
    ("sd", "img2img"): "StableDiffusionImg2ImgPipeline",
    ("sd", "inpaint"): "StableDiffusionInpaintPipeline",
    ("sd", "control+img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    ("sd", "control+inpaint"): "StableDiffusionControlNetInpaintPipeline",
    ("sdxl", "control"): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "img2img"): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl", "inpaint"): "StableDiffusionXLInpaintPipeline",
    ("sdxl", "control+img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("sdxl", "control+inpaint"): "StableDiffusionXLControlNetInpaintPipeline",
    ("flux", "control"): "FluxControlNetPipeline",
    ("flux", "img2img"): "FluxImg2ImgPipeline",
    ("flux", "inpaint"): "FluxInpaintPipeline",
    ("flux", "control+img2img"): "FluxControlNetImg2ImgPipeline",
    ("flux", "control+inpaint"): "FluxControlNetInpaintPipeline",
    ("sd3", "control"): "StableDiffusion3ControlNetPipeline",
    ("sd3", "img2img"): "StableDiffusion3Img2ImgPipeline",
    ("sd3", "inpaint"): "StableDiffusion3InpaintPipeline",
}
# Families whose transformer takes 2x2 latent patches, and whose img2img keeps the last
# steps - int(steps - steps * strength) steps (flow matching).
_PATCHED = ("flux", "sd3")


def _mode(request: GenerationRequest) -> str:
    parts = ["control"] if request.controls else []
    if request.init_image is not None:
        parts.append("inpaint" if request.mask_image is not None else "img2img")
    return "+".join(parts) or "text2img"


def _family(pipe: Any) -> str:
    name = type(pipe).__name__
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("StableDiffusionXL"):
        return "sdxl"
    if name.startswith("StableDiffusion3"):
        return "sd3"
    if name.startswith("StableDiffusion"):
        return "sd"
    return name


def _pipeline_over(cls: Any, base: Any, overrides: dict[str, Any]) -> Any:
    """A new pipeline object of ``cls`` over ``base``'s modules (no weights are copied).

    Only the given components (a fresh scheduler, a ControlNet) are new; registered config values
    such as ``requires_safety_checker`` carry over so the new object behaves like the base.
    """
    accepted = inspect.signature(cls.__init__).parameters
    kwargs: dict[str, Any] = {k: v for k, v in base.components.items() if k in accepted}
    for key, value in base.config.items():
        if (
            key in accepted
            and key not in kwargs
            and not key.startswith("_")
            and not isinstance(value, list | tuple)
        ):
            kwargs[key] = value
    kwargs.update(overrides)
    return cls(**kwargs)


class DiffusionModel:
    """A loaded text-to-image pipeline. ``generate`` is blocking and runs in a pool worker thread."""

    def __init__(self, name: str, spec: ModelSpec, pipe: Any, device: str) -> None:
        self.name = name
        self.spec = spec
        self.device = device
        self.pipe = pipe
        self.family = _family(pipe)
        self.flow_matching = "FlowMatch" in type(pipe.scheduler).__name__
        vae_factor = int(getattr(pipe, "vae_scale_factor", 8))
        # Flux and SD3 take 2x2 latent patches, so their sizes must be multiples of twice the VAE factor.
        self.size_multiple = vae_factor * 2 if self.family in _PATCHED else vae_factor
        self.takes_negative_prompt = "negative_prompt" in inspect.signature(type(pipe).__call__).parameters
        self._bytes = module_bytes(pipe.components.values())
        self.prompts = prompt_encoding.PromptEncoding(
            pipe, self.family, spec.capabilities.get("prompt_weighting", True)
        )

    def memory_bytes(self) -> int:
        return self._bytes

    def move_to(self, device: str) -> None:
        """Move the weights (the pool offloads idle GPU models to CPU RAM and back)."""
        self.pipe.to(device)
        self.device = device

    @property
    def schedulers(self) -> list[str]:
        return list(choices_for(self.flow_matching))

    def check(self, request: GenerationRequest) -> None:
        """Model-specific argument checks, run before queueing so errors come back at once."""
        for side, value in (("width", request.width), ("height", request.height)):
            if value % self.size_multiple:
                raise InvalidArgument(
                    f"{side}={value} is not a multiple of {self.size_multiple}, which model {self.name!r} "
                    f"needs; use {value - value % self.size_multiple or self.size_multiple} "
                    f"or {value - value % self.size_multiple + self.size_multiple}"
                )
        if request.negative_prompt and (self.family == "flux" or not self.takes_negative_prompt):
            raise InvalidArgument(
                f"model {self.name!r} is guidance-distilled and ignores negative prompts; "
                "leave negative_prompt empty or choose a Stable Diffusion model"
            )
        check_scheduler(request.scheduler, flow_matching=self.flow_matching, model=self.name)
        if request.strength is not None and self.family not in _PATCHED:
            _check_denoising_steps(request.steps, request.strength)
        mode = _mode(request)
        if mode != "text2img":
            self._pipeline_class(mode)

    def notes(self, request: GenerationRequest) -> list[RequestNote]:
        """What this pipeline will cut or not use of ``request``: prompt text past a text encoder's
        window (counted with the pipeline's own tokenizers), the denoising steps img2img and
        inpainting skip, and guidance settings that change nothing."""
        notes: list[RequestNote] = []
        chunked = self.prompts.used_for(request.prompt, request.negative_prompt)  # compel: nothing cut
        for argument, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
            if text:
                notes += self.prompts.notes(argument, text) if chunked else self._unread(argument, text)
        guidance = request.guidance_scale
        if self.family in ("sd", "sdxl", "sd3") and guidance <= 1:
            # These pipelines run classifier-free guidance only when guidance_scale > 1.
            if request.negative_prompt:
                notes.append(
                    RequestNote(
                        "negative_prompt",
                        f"negative_prompt was not used: guidance_scale={guidance} turns classifier-free "
                        "guidance off, and a negative prompt only acts through it (use guidance_scale > 1).",
                    )
                )
            if guidance < 1:
                notes.append(
                    RequestNote(
                        "guidance_scale",
                        f"guidance_scale={guidance} acts as 1 on model {self.name!r}: any value up to 1 "
                        "turns classifier-free guidance off, giving the same images as guidance_scale=1.",
                    )
                )
        embeds = getattr(
            getattr(getattr(self.pipe, "transformer", None), "config", None), "guidance_embeds", True
        )
        if self.family == "flux" and not embeds and guidance:
            notes.append(
                RequestNote(
                    "guidance_scale",
                    f"guidance_scale={guidance} changes nothing on model {self.name!r}: it has no guidance "
                    "embedding (a timestep-distilled model).",
                )
            )
        if request.init_image is not None and request.strength is not None:
            run = _denoising_steps(self.family, request.steps, request.strength)
            if run < request.steps:
                notes.append(
                    RequestNote(
                        "steps",
                        f"{run} of the {request.steps} denoising steps ran: with strength={request.strength} "
                        f"img2img and inpainting skip the first {request.steps - run}; steps="
                        f"{_steps_for(self.family, request.steps, request.strength)} would run "
                        f"{request.steps}.",
                    )
                )
        return notes

    def _unread(self, argument: str, text: str) -> list[RequestNote]:
        """Notes for the part of ``text`` each text encoder's window leaves out (encoders that cut
        the same text are named together)."""
        cuts: dict[tuple[int, int, Dropped], list[str]] = {}
        for attr in ("tokenizer", "tokenizer_2", "tokenizer_3"):
            tokenizer = getattr(self.pipe, attr, None)
            if tokenizer is None:
                continue
            kind = type(tokenizer).__name__.removesuffix("Fast").removesuffix("Tokenizer")
            window = self._window(tokenizer, kind)
            if window is None:
                continue
            room = window - len(tokenizer("").input_ids)  # the window also holds BOS/EOS tokens
            ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
            dropped = dropped_text(tokenizer, text, room) if len(ids) > room else None
            if dropped is not None:
                key = (len(ids), room, dropped)
                cuts.setdefault(key, []).append(f"{attr.replace('tokenizer', 'text_encoder')} ({kind})")
        return [
            RequestNote(
                argument,
                f"{argument} is {tokens} tokens for {' and '.join(encoders)}, which read"
                f"{'s' if len(encoders) == 1 else ''} the first {room}; the last {tokens - room} were "
                f"not read: {dropped.text!r}"
                f"{' (its first word was read in part)' if dropped.partial else ''}. Shorten it, or put "
                "what matters first.",
                dropped.text,
            )
            for (tokens, room, dropped), encoders in cuts.items()
        ]

    def _window(self, tokenizer: Any, kind: str) -> int | None:
        if kind == "T5":  # the pipeline's max_sequence_length, not the tokenizer's own limit
            configured = {**self.spec.pipeline_kwargs}.get("max_sequence_length")
            default = inspect.signature(type(self.pipe).__call__).parameters.get("max_sequence_length")
            window = configured or (default.default if default is not None else None)
        else:
            window = getattr(tokenizer, "model_max_length", None)
        return int(window) if isinstance(window, int) and 0 < window < 100_000 else None

    def generate(
        self, request: GenerationRequest, on_step: StepCallback | None, cancel: CancelToken
    ) -> list[Image.Image]:
        """Run the pipeline; one image per seed, each reproducible from its own seed. The request's
        LoRAs are attached for this call only (see :func:`~multimodal_mcp.backends.lora.attached_loras`)."""
        with attached_loras(self.pipe, request.loras, self.name):
            return self._generate(request, on_step, cancel)

    def _generate(
        self, request: GenerationRequest, on_step: StepCallback | None, cancel: CancelToken
    ) -> list[Image.Image]:
        import torch

        self.check(request)
        scheduler = build_scheduler(
            request.scheduler, self.pipe.scheduler.config, flow_matching=self.flow_matching, model=self.name
        )
        overrides: dict[str, Any] = {"scheduler": scheduler}
        mode = _mode(request)
        pipe_cls: Any = type(self.pipe) if mode == "text2img" else self._pipeline_class(mode)
        if request.controls:
            nets = [c.controlnet for c in request.controls]
            if len(nets) == 1:
                overrides["controlnet"] = nets[0]
            else:
                import diffusers

                multi = {"flux": "FluxMultiControlNetModel", "sd3": "SD3MultiControlNetModel"}.get(
                    self.family, "MultiControlNetModel"
                )
                overrides["controlnet"] = getattr(diffusers, multi)(nets)
        if request.reference is not None:
            overrides["image_encoder"] = request.reference.adapter.image_encoder
        pipe = _pipeline_over(pipe_cls, self.pipe, overrides)
        pipe.set_progress_bar_config(disable=True)

        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in request.seeds]
        total = request.steps

        def on_step_end(
            _pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            cancel.raise_if_cancelled()
            if on_step is not None:
                # img2img and inpainting run only the last `strength` share of the steps.
                steps = int(getattr(_pipe, "num_timesteps", total) or total)
                on_step(min(step + 1, steps), steps)
            return callback_kwargs

        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": len(request.seeds),
            "generator": generators,
            "output_type": "pil",
            "callback_on_step_end": on_step_end,
            **self.spec.pipeline_kwargs,
            **request.extra,
        }
        if request.negative_prompt:
            kwargs["negative_prompt"] = request.negative_prompt
        if self.prompts.used_for(request.prompt, request.negative_prompt):  # long or weighted: compel
            del kwargs["prompt"]
            kwargs.pop("negative_prompt", None)
            kwargs.update(self.prompts.embeddings(request.prompt, request.negative_prompt))
        if request.controls:
            images = [
                c.image.convert("RGB").resize((request.width, request.height)) for c in request.controls
            ]
            scales = [c.scale for c in request.controls]
            # SD 1.5/XL ControlNet pipelines take the map as `image`; with img2img/inpainting, `image` is
            # the picture to edit and the map is `control_image`, as in every Flux and SD3 one.
            edits = request.init_image is not None
            map_key = "control_image" if edits or self.family in _PATCHED else "image"
            kwargs[map_key] = images[0] if len(images) == 1 else images
            kwargs["controlnet_conditioning_scale"] = scales[0] if len(scales) == 1 else scales
        if request.init_image is not None:
            kwargs["image"] = request.init_image.convert("RGB")
            kwargs["strength"] = request.strength
        if request.mask_image is not None:
            kwargs["mask_image"] = request.mask_image
        if request.reference is not None:
            kwargs["ip_adapter_image"] = request.reference.image.convert("RGB")
        accepted = inspect.signature(pipe_cls.__call__).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}  # img2img takes its size from the image
        cancel.raise_if_cancelled()
        if request.reference is None:
            with torch.inference_mode():
                images = list(pipe(**kwargs).images)
        else:
            # The adapter's attention processors go into the shared UNet for this call only; calls on a
            # device run one at a time, and the finally clause restores the UNet for the next one.
            pipe.load_ip_adapter(
                request.reference.adapter.state_dict,
                subfolder=None,
                weight_name=None,
                image_encoder_folder=None,
            )
            try:
                pipe.set_ip_adapter_scale(request.reference.scale)
                with torch.inference_mode():
                    images = list(pipe(**kwargs).images)
            finally:
                pipe.unload_ip_adapter()
        if request.init_image is not None and request.mask_image is not None:
            # Inpainting: every pixel outside the mask comes back exactly, feathered only inside it.
            from multimodal_mcp.imaging.analysis import keep_outside_mask

            original = request.init_image.convert("RGB")
            images = [keep_outside_mask(original, image, request.mask_image) for image in images]
        return images

    def supports(self, mode: str) -> bool:
        return mode == "text2img" or (self.family, mode) in _PIPELINES

    def _pipeline_class(self, mode: str) -> Any:
        import diffusers

        class_name = _PIPELINES.get((self.family, mode))
        if class_name is None:
            able = sorted({family for family, m in _PIPELINES if m == mode})
            raise UnsupportedOperation(
                f"model {self.name!r} ({self.family}) cannot do {mode.replace('+', ' with ')} in this "
                f"server; model families that can: {', '.join(able)}"
            )
        return getattr(diffusers, class_name)


@dataclass
class ControlNetWeights:
    """A loaded ControlNet; it is attached to a base pipeline per request, never copied."""

    name: str
    spec: ModelSpec
    device: str
    model: Any
    _bytes: int = 0

    def memory_bytes(self) -> int:
        return self._bytes

    def move_to(self, device: str) -> None:
        self.model.to(device)
        self.device = device


def _pretrained_kwargs(name: str, spec: ModelSpec, ctx: LoadContext) -> tuple[str, dict[str, Any]]:
    source = resolve_source(spec.source, ctx.tiny_dir)
    require_safetensors(name, spec, source)
    require_downloadable(name, spec, source)
    quiet_progress_bars()
    kwargs: dict[str, Any] = {
        "dtype": pick_dtype(spec.dtype, ctx.device, model=name),
        **pretrained_options(spec),
    }
    if spec.variant:
        kwargs["variant"] = spec.variant
    return source, kwargs


def load_text_to_image(name: str, spec: ModelSpec, ctx: LoadContext) -> DiffusionModel:
    from diffusers import AutoPipelineForText2Image

    source, kwargs = _pretrained_kwargs(name, spec, ctx)
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise load_error(name, spec, exc) from exc
    pipe = pipe.to(ctx.device)
    pipe.set_progress_bar_config(disable=True)
    return DiffusionModel(name, spec, pipe, ctx.device)


def load_controlnet(name: str, spec: ModelSpec, ctx: LoadContext) -> ControlNetWeights:
    import diffusers

    source, kwargs = _pretrained_kwargs(name, spec, ctx)
    try:
        # The checkpoint's config names its class: ControlNetModel (SD, SDXL) or FluxControlNetModel.
        revision = {"revision": spec.revision} if spec.revision else {}
        class_name = diffusers.ControlNetModel.load_config(source, **revision).get(
            "_class_name", "ControlNetModel"
        )
        model_class = getattr(diffusers, class_name, diffusers.ControlNetModel)
        model = model_class.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise load_error(name, spec, exc) from exc
    model = model.to(ctx.device)
    return ControlNetWeights(name, spec, ctx.device, model, module_bytes([model]))


@dataclass
class IPAdapterWeights:
    """A loaded IP-Adapter: its weights (as diffusers' ``load_ip_adapter`` takes them) and its image
    encoder. Attached to the base pipeline's UNet for one request and detached after it."""

    name: str
    spec: ModelSpec
    device: str
    state_dict: dict[str, dict[str, Any]]
    image_encoder: Any
    _bytes: int = 0

    def memory_bytes(self) -> int:
        return self._bytes

    def move_to(self, device: str) -> None:
        self.image_encoder.to(device)
        for part in self.state_dict.values():
            for key, tensor in part.items():
                part[key] = tensor.to(device)
        self.device = device


def load_ip_adapter(name: str, spec: ModelSpec, ctx: LoadContext) -> IPAdapterWeights:
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import CLIPVisionModelWithProjection

    source, kwargs = _pretrained_kwargs(name, spec, ctx)
    assert spec.weight_name is not None and spec.image_encoder is not None
    try:
        if Path(source).is_dir():
            weights = Path(source) / spec.weight_name
        else:
            from huggingface_hub import hf_hub_download

            weights = Path(hf_hub_download(source, spec.weight_name, revision=spec.revision))
        flat = load_file(str(weights), device=ctx.device)
        encoder = CLIPVisionModelWithProjection.from_pretrained(
            source,
            subfolder=spec.image_encoder,
            dtype=kwargs["dtype"],
            use_safetensors=True,
            trust_remote_code=spec.trust_remote_code,
            revision=spec.revision or "main",
        )
    except Exception as exc:
        raise load_error(name, spec, exc) from exc
    dtype = kwargs["dtype"]
    state_dict: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, tensor in flat.items():
        part, _, rest = key.partition(".")
        if part in state_dict:
            state_dict[part][rest] = tensor.to(dtype)
    encoder = encoder.to(ctx.device).eval()  # type: ignore[arg-type]
    size = module_bytes([encoder]) + sum(
        t.numel() * t.element_size() for p in state_dict.values() for t in p.values()
    )
    return IPAdapterWeights(name, spec, ctx.device, state_dict, encoder, size)


def _denoising_steps(family: str, steps: int, strength: float) -> int:
    """The steps img2img and inpainting run of ``steps`` at ``strength`` (diffusers' get_timesteps):
    int(steps * strength) for Stable Diffusion 1.5 and XL, steps - int(steps - steps * strength) for
    Flux and SD3."""
    if family in _PATCHED:
        return steps - int(max(steps - steps * strength, 0))
    return min(int(steps * strength), steps)


def _steps_for(family: str, run: int, strength: float) -> int:
    """The fewest steps that run at least ``run`` denoising steps at ``strength``."""
    steps = max(run, math.ceil(run / strength) - 1)
    while _denoising_steps(family, steps, strength) < run:
        steps += 1
    return steps


def _check_denoising_steps(steps: int, strength: float) -> None:
    """Stable Diffusion img2img and inpainting run int(steps * strength) steps: zero is an error there."""
    if int(steps * strength) >= 1:
        return
    fix = "a higher strength"
    if strength >= 1e-4:  # below that no step count a server allows is enough
        enough = math.ceil(1 / strength)
        while int(enough * strength) < 1:
            enough += 1
        fix = f"steps >= {enough} or {fix}"
    raise InvalidArgument(
        f"steps={steps} with strength={strength} leaves no denoising step (img2img and inpainting run "
        f"int(steps * strength) of them); use {fix}"
    )


# --- the backend: what the registry knows about diffusers models ---------------------------------

ARCHITECTURES = ("sd", "sdxl", "flux", "sd3")
_TINY_ARCHITECTURES = {"sd15": "sd", "sdxl": "sdxl", "flux": "flux", "sd3": "sd3"}


def architecture_of(spec: ModelSpec) -> str:
    """The pipeline family of a text-to-image model, before loading it: the config's
    ``architecture``, else the checkpoint's ``model_index.json`` when it is on disk, else its name."""
    if spec.architecture:
        return spec.architecture
    source = spec.source
    if source.startswith(TINY_SOURCE_PREFIX):
        return _TINY_ARCHITECTURES.get(source[len(TINY_SOURCE_PREFIX) :], "sd")
    folder = _on_disk(source)
    if folder is not None:
        import json
        from pathlib import Path

        try:
            class_name = json.loads((Path(folder) / "model_index.json").read_text()).get("_class_name", "")
            return _family_of_class(str(class_name))
        except (OSError, ValueError):
            pass
    lowered = source.lower()
    if "flux" in lowered:
        return "flux"
    if "stable-diffusion-3" in lowered or "sd3" in lowered:
        return "sd3"
    if "xl" in lowered:
        return "sdxl"
    return "sd"


def _on_disk(source: str) -> str | None:
    from pathlib import Path

    return source if Path(source).is_dir() else None


def _family_of_class(name: str) -> str:
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("StableDiffusion3"):
        return "sd3"
    if name.startswith("StableDiffusionXL"):
        return "sdxl"
    return "sd"


class DiffusersBackend(LocalBackend):
    """Stable Diffusion 1.5, SDXL, SD3 and Flux pipelines, their ControlNets, IP-Adapters and LoRAs."""

    title = "diffusers"
    tasks = frozenset({"text_to_image", "controlnet", "ip_adapter", "lora"})

    def load(self, name: str, spec: ModelSpec, ctx: LoadContext) -> Any:
        if spec.task == "controlnet":
            return load_controlnet(name, spec, ctx)
        if spec.task == "ip_adapter":
            return load_ip_adapter(name, spec, ctx)
        if spec.task == "lora":
            return load_lora(name, spec, ctx)
        return load_text_to_image(name, spec, ctx)

    def capabilities(self, name: str, spec: ModelSpec, config: Config) -> Capabilities:
        if spec.task != "text_to_image":
            return Capabilities()  # components: a text_to_image model attaches them by name
        family = architecture_of(spec)
        flow = family in ("flux", "sd3")
        controls = sorted(
            {
                other.control_type
                for other in config.models.values()
                if other.task == "controlnet" and other.control_type and name in other.base_models
            }
        )
        controls = [c for c in controls if (family, "control") in _PIPELINES]
        adapters = any(
            other.task == "ip_adapter" and name in other.base_models for other in config.models.values()
        )
        return Capabilities(
            seed=True,
            negative_prompt=family != "flux",
            steps=True,
            guidance_scale=True,
            schedulers=tuple(choices_for(flow)),
            sizes=SizeRule(multiple_of=16 if flow else 8),
            max_images=16,
            edit_modes=tuple(m for m in ("img2img", "inpaint") if (family, m) in _PIPELINES),  # type: ignore[misc]
            strength=(family, "img2img") in _PIPELINES,
            control_types=tuple(controls),
            reference_images=1 if adapters else 0,
            reference_scale=adapters,
            exact_outside_mask=(family, "inpaint") in _PIPELINES,
            loras=loras_for(name, config),
            prompt_weighting=family in prompt_encoding.FAMILIES and prompt_encoding.available(),
        )


backend = DiffusersBackend()
