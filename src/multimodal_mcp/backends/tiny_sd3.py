"""Tiny random-weight Stable Diffusion 3 checkpoints: the text-to-image pipeline and its canny
ControlNet, built offline from the real diffusers / transformers classes.

SD3 reads a prompt with three text encoders: CLIP-L and CLIP-G (both ``CLIPTextModelWithProjection``;
their hidden states are concatenated along the channel axis and padded to T5's width, their pooled
projections concatenated) and T5 (``T5EncoderModel``, whose tokens follow the CLIP ones). The
transformer (``SD3Transformer2DModel``, MMDiT) denoises 16-channel latents in 2x2 patches with a
flow-matching Euler scheduler. Tokenizers come from
:mod:`multimodal_mcp.backends.tiny_transformers` (hand-written vocabularies, nothing downloaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multimodal_mcp.backends.tiny_transformers import (
    make_clip_text_encoder,
    make_clip_tokenizer,
    make_t5_tokenizer,
    seed_torch,
)

_CLIP_WIDTH = 32  # hidden size and projection size of each tiny CLIP text encoder
_JOINT_WIDTH = 2 * _CLIP_WIDTH  # T5's width: the two CLIP hidden states side by side fill it exactly
_LATENT_CHANNELS = 16


# Shared by the transformer and its ControlNet, so the ControlNet's residuals fit the transformer's blocks.
_MMDIT: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": _LATENT_CHANNELS,
    "out_channels": _LATENT_CHANNELS,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "joint_attention_dim": _JOINT_WIDTH,
    "caption_projection_dim": 32,  # = heads * head dim
    "pooled_projection_dim": 2 * _CLIP_WIDTH,
    "pos_embed_max_size": 96,  # latents up to 96 patches a side: 1536 px
}


def make_transformer() -> Any:
    """The tiny SD3's transformer, seeded: the same weights at every build."""
    from diffusers import SD3Transformer2DModel

    seed_torch(6004)
    # Two blocks: the last one updates only the image tokens (context_pre_only) and takes no ControlNet
    # residual, so a one-block transformer would ignore any ControlNet.
    return SD3Transformer2DModel(**_MMDIT, num_layers=2)


def _t5_encoder(tokenizer: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    seed_torch(6003)
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=_JOINT_WIDTH,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()


def build_sd3(target: Path) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    clip_tokenizer = make_clip_tokenizer()
    t5_tokenizer = make_t5_tokenizer()
    seed_torch(6005)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # three 2x downsamplings: scale factor 8
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        latent_channels=_LATENT_CHANNELS,
        # SD3's own latent normalisation, and no quant convolutions, as in its VAE config.
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    pipe: Any = StableDiffusion3Pipeline(
        transformer=make_transformer(),
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=vae,
        text_encoder=make_clip_text_encoder(6001, clip_tokenizer, with_projection=True),
        tokenizer=clip_tokenizer,
        text_encoder_2=make_clip_text_encoder(6002, clip_tokenizer, with_projection=True),
        tokenizer_2=clip_tokenizer,
        text_encoder_3=_t5_encoder(t5_tokenizer),
        tokenizer_3=t5_tokenizer,
    )
    pipe.save_pretrained(target, safe_serialization=True)


def build_controlnet_canny_sd3(target: Path) -> None:
    import torch
    from diffusers import SD3ControlNetModel

    seed_torch(6006)
    controlnet: Any = SD3ControlNetModel(**_MMDIT, num_layers=1, extra_conditioning_channels=0)
    # The output projections and the control-map embedding start at zero, which would make the
    # ControlNet a no-op; give them ordinary random weights.
    with torch.no_grad():
        for module in [*controlnet.controlnet_blocks, controlnet.pos_embed_input.proj]:
            module.reset_parameters()
    controlnet.save_pretrained(target, safe_serialization=True)
