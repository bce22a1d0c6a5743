"""LoRAs for diffusers pipelines: loaded once by the pool (their memory counted like any model's),
attached to a base pipeline for one call and removed after it.

A configured LoRA (``task = "lora"``) is a safetensors file in diffusers' or kohya's LoRA layout:
``source`` is a local ``.safetensors`` file, a local folder or a Hub repository, with ``weight_name``
naming the file inside a folder or repository (default ``pytorch_lora_weights.safetensors``, what
diffusers' ``save_lora_weights`` writes). diffusers converts the layout when the weights are attached
(``load_lora_weights``); several are combined with adapter weights (``set_adapters``), through peft.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multimodal_mcp.backends.base import LoadContext, LoraInput
from multimodal_mcp.backends.devices import pick_dtype
from multimodal_mcp.backends.sources import load_error, require_downloadable, resolve_source
from multimodal_mcp.config import Config, ModelSpec
from multimodal_mcp.errors import BackendError

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


@dataclass
class LoraWeights:
    """A loaded LoRA: its tensors by key, as the file holds them, on the pool's device."""

    name: str
    spec: ModelSpec
    device: str
    state_dict: dict[str, Any]
    _bytes: int = 0

    def memory_bytes(self) -> int:
        return self._bytes

    def move_to(self, device: str) -> None:
        self.state_dict = {key: tensor.to(device) for key, tensor in self.state_dict.items()}
        self.device = device


def loras_for(base: str, config: Config) -> tuple[str, ...]:
    """The configured LoRAs that fit text-to-image model ``base``, in config order."""
    return tuple(
        name for name, spec in config.models.items() if spec.task == "lora" and base in spec.base_models
    )


def _weights_file(name: str, spec: ModelSpec, source: str) -> Path:
    if source.endswith(".safetensors"):
        return Path(source).expanduser()
    weight_name = spec.weight_name or DEFAULT_WEIGHT_NAME
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser() / weight_name
    if Path(source).suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"):
        raise BackendError(
            f"LoRA {name!r}: {spec.source!r} is a pickle file; this server loads .safetensors only, since "
            "loading a pickle can run arbitrary code. Convert it or choose another LoRA."
        )
    from huggingface_hub import hf_hub_download

    require_downloadable(name, spec, source)
    return Path(hf_hub_download(source, weight_name, revision=spec.revision))


def load_lora(name: str, spec: ModelSpec, ctx: LoadContext) -> LoraWeights:
    """Read a LoRA's tensors onto ``ctx.device`` in the configured dtype.

    Raises:
        BackendError: the file is missing, not safetensors, or cannot be read.
    """
    from safetensors.torch import load_file

    source = resolve_source(spec.source, ctx.tiny_dir)
    dtype = pick_dtype(spec.dtype, ctx.device, model=name)
    try:
        tensors = load_file(str(_weights_file(name, spec, source)), device=ctx.device)
    except BackendError:
        raise
    except Exception as exc:
        raise load_error(name, spec, exc) from exc
    state_dict = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
    size = sum(t.numel() * t.element_size() for t in state_dict.values())
    return LoraWeights(name, spec, ctx.device, state_dict, size)


@contextlib.contextmanager
def attached_loras(pipe: Any, loras: Sequence[LoraInput], model: str = "") -> Iterator[None]:
    """``pipe`` with ``loras`` attached (each under its configured name, weighted by its scale) for
    the block, and without them after it, as before: the LoRA layers are removed, not just disabled.
    ``model`` (the base model's configured name) is named in errors.

    ``pipe``'s modules are shared by every call of the model; the caller runs on the model's device
    lane, one call at a time, so no other call sees the LoRAs.

    Raises:
        BackendError: a LoRA does not fit the pipeline (its layers are not the model's, or none of
            its weights name the model's layers); the pipeline is left without LoRAs.
    """
    base = f"model {model!r}" if model else "this model"
    if not loras:
        yield
        return
    try:
        for lora in loras:
            try:
                with warnings.catch_warnings():
                    # peft warns on each adapter after the first that the model already holds a
                    # peft_config: combining LoRAs is what this does, so the warning says nothing.
                    warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
                    # A copy: diffusers converts other layouts by popping keys from the dict it is given.
                    pipe.load_lora_weights(dict(lora.weights.state_dict), adapter_name=lora.name)
            except (ValueError, KeyError, RuntimeError) as exc:
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                raise BackendError(
                    f"LoRA {lora.name!r} does not fit {base} ({type(exc).__name__}: {first}); check "
                    "its base_models in the config"
                ) from None
            if not _attached(pipe, lora.name):
                # diffusers keeps only the keys whose prefix names one of the pipeline's modules
                # (unet, transformer, text_encoder): a LoRA made for another family (an SD3 LoRA's
                # "transformer." keys on an SD 1.5 pipeline) loads nothing, without an error.
                raise BackendError(
                    f"LoRA {lora.name!r} does not fit {base}: none of its weights match the layers of "
                    f"{base} ({type(pipe).__name__}), so it was made for another base model; check its "
                    "base_models in the config"
                )
        pipe.set_adapters([lora.name for lora in loras], adapter_weights=[lora.scale for lora in loras])
        yield
    finally:
        pipe.unload_lora_weights()


def _attached(pipe: Any, name: str) -> bool:
    """Whether adapter ``name`` was loaded into any of ``pipe``'s modules."""
    listed = getattr(pipe, "get_list_adapters", None)
    if listed is None:  # not a diffusers LoRA-loading pipeline: nothing to check against
        return True
    return any(name in adapters for adapters in listed().values())
