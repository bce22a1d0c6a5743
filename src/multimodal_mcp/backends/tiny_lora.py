"""Tiny random-weight LoRAs for the tiny SD 1.5 and SD3, built offline with peft and saved in diffusers'
LoRA format (``pytorch_lora_weights.safetensors``, keys ``unet.<module>.lora_{A,B}.weight`` or
``transformer.<module>...``) by the pipeline's own ``save_lora_weights``: the same file a LoRA trained
with diffusers' scripts is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multimodal_mcp.backends.tiny_diffusion import _SD15_UNET_SHARED
from multimodal_mcp.backends.tiny_transformers import seed_torch

# The attention projections of every transformer block: the layers LoRA training scripts adapt.
_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _build_lora_sd15(target: Path, seed: int, rank: int) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    # Only the shapes of the UNet matter: the file holds the LoRA layers, not the UNet's weights.
    unet: Any = UNet2DConditionModel(
        **_SD15_UNET_SHARED, out_channels=4, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=8
    )
    seed_torch(seed)
    # init_lora_weights=False keeps both matrices random; the usual init zeroes B, a LoRA that changes
    # nothing until trained.
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=_TARGETS, init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(
        target, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True
    )


def build_lora_sd15_ink(target: Path) -> None:
    _build_lora_sd15(target, seed=7001, rank=4)


def build_lora_sd15_glow(target: Path) -> None:
    _build_lora_sd15(target, seed=7002, rank=8)


def build_lora_sd3(target: Path) -> None:
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from multimodal_mcp.backends.tiny_sd3 import make_transformer

    transformer = make_transformer()  # only its shapes matter, as above
    seed_torch(7003)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=_TARGETS, init_lora_weights=False))
    StableDiffusion3Pipeline.save_lora_weights(
        target, transformer_lora_layers=get_peft_model_state_dict(transformer), safe_serialization=True
    )
