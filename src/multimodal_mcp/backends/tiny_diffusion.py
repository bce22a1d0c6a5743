"""Tiny random-weight diffusers checkpoints: SD 1.5, SDXL and Flux pipelines, their canny ControlNets,
and an IP-Adapter for SD 1.5. Text encoders and tokenizers come from
:mod:`multimodal_mcp.backends.tiny_transformers`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from multimodal_mcp.backends.tiny_transformers import (
    CLIP_IMAGE_SIZE,
    clip_vision_config,
    make_clip_text_encoder,
    make_clip_tokenizer,
    make_t5_tokenizer,
    seed_torch,
)

# Shared by the sd15 UNet and its ControlNet so the ControlNet residuals line up with the UNet blocks.
_SD15_UNET_SHARED: dict[str, Any] = {
    "in_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": (2, 4),
    "norm_num_groups": 32,
}

# Four VAE blocks give three 2x downsamplings, i.e. the usual VAE scale factor of 8.
_VAE_BLOCKS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}


def _make_vae(seed: int, **overrides: Any) -> Any:
    from diffusers import AutoencoderKL

    seed_torch(seed)
    return AutoencoderKL(**{**_VAE_BLOCKS, **overrides})


# Per-model builders ----------------------------------------------------------------------------------


def build_sd15(target: Path) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = make_clip_tokenizer()
    seed_torch(1501)
    unet = UNet2DConditionModel(
        **_SD15_UNET_SHARED,
        out_channels=4,
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        sample_size=8,
    )
    # The same scheduler settings as the public SD 1.5 checkpoints, so swapping schedulers behaves alike.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    pipe: Any = StableDiffusionPipeline(
        vae=_make_vae(1502),
        text_encoder=make_clip_text_encoder(1503, tokenizer),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(target, safe_serialization=True)


def _sdxl_parts() -> tuple[Any, Any, Any, Any]:
    """The tiny SDXL's tokenizer, two text encoders and UNet (also the template of its ControlNet)."""
    from diffusers import UNet2DConditionModel

    tokenizer = make_clip_tokenizer()
    text_encoder = make_clip_text_encoder(2001, tokenizer)
    text_encoder_2 = make_clip_text_encoder(2002, tokenizer, with_projection=True)
    time_embed_dim = 8
    seed_torch(2003)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        # The UNet attends to both text encoders' hidden states concatenated along the channel axis.
        cross_attention_dim=text_encoder.config.hidden_size + text_encoder_2.config.hidden_size,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # Six micro-conditioning numbers (original size, crop offset, target size) plus the pooled text
        # embedding of the second encoder.
        projection_class_embeddings_input_dim=6 * time_embed_dim + text_encoder_2.config.projection_dim,
        norm_num_groups=32,
        sample_size=8,
    )
    return tokenizer, text_encoder, text_encoder_2, unet


def build_sdxl(target: Path) -> None:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer, text_encoder, text_encoder_2, unet = _sdxl_parts()
    scheduler: Any = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    # The public SDXL scheduler config also carries these DDIM/PNDM keys; without them a scheduler swapped in
    # via ``from_config`` (e.g. PNDM running its PRK warm-up) behaves differently than with real checkpoints.
    scheduler.register_to_config(skip_prk_steps=True, clip_sample=False, set_alpha_to_one=False)
    pipe: Any = StableDiffusionXLPipeline(
        vae=_make_vae(2004, scaling_factor=0.13025),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(target, safe_serialization=True)


def _flux_transformer(joint_dim: int, pooled_dim: int, latent_channels: int) -> Any:
    from diffusers import FluxTransformer2DModel

    seed_torch(3004)
    return FluxTransformer2DModel(
        patch_size=1,
        # Latents are packed into 2x2 patches before entering the transformer.
        in_channels=4 * latent_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=joint_dim,
        pooled_projection_dim=pooled_dim,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),  # must sum to attention_head_dim
    )


def build_controlnet_canny_flux(target: Path) -> None:
    import torch
    from diffusers import FluxControlNetModel

    # The tiny Flux's CLIP and T5 widths are both 32; its latents have 16 channels.
    transformer = _flux_transformer(32, 32, 16)
    seed_torch(4003)
    controlnet: Any = FluxControlNetModel.from_transformer(
        transformer, num_layers=1, num_single_layers=0, attention_head_dim=16, num_attention_heads=2
    )
    # Zero-initialised outputs would make the ControlNet a no-op; give them ordinary random weights.
    with torch.no_grad():
        for module in [*controlnet.controlnet_blocks, controlnet.controlnet_x_embedder]:
            module.reset_parameters()
    controlnet.save_pretrained(target, safe_serialization=True)


def build_flux(target: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import T5Config, T5EncoderModel

    clip_tokenizer = make_clip_tokenizer()
    t5_tokenizer = make_t5_tokenizer()
    text_encoder = make_clip_text_encoder(3001, clip_tokenizer)

    seed_torch(3002)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=t5_tokenizer.pad_token_id,
            eos_token_id=t5_tokenizer.eos_token_id,
        )
    ).eval()

    latent_channels = 16
    vae = _make_vae(
        3003,
        latent_channels=latent_channels,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )

    transformer = _flux_transformer(
        text_encoder_2.config.d_model, text_encoder.config.hidden_size, latent_channels
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe: Any = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(target, safe_serialization=True)


def build_controlnet_canny_sd15(target: Path) -> None:
    from diffusers import ControlNetModel

    seed_torch(4001)
    controlnet: Any = ControlNetModel(
        **_SD15_UNET_SHARED,
        conditioning_channels=3,
        # Three stride-2 convolutions: the conditioning image is downsampled by 8, matching the sd15 VAE.
        conditioning_embedding_out_channels=(8, 16, 16, 32),
    )
    _make_controlnet_effective(controlnet)
    controlnet.save_pretrained(target, safe_serialization=True)


def build_controlnet_canny_sdxl(target: Path) -> None:
    from diffusers import ControlNetModel

    unet = _sdxl_parts()[3]
    seed_torch(4002)
    controlnet: Any = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 32))
    _make_controlnet_effective(controlnet)
    controlnet.save_pretrained(target, safe_serialization=True)


def _make_controlnet_effective(controlnet: Any) -> None:
    import torch

    # A fresh ControlNet has zero-initialised output convolutions and would not influence the UNet at all.
    # Give them ordinary random weights, and give the conditioning-image encoder He-initialised weights
    # without biases: with the default init its signal fades over its seven layers and a thin edge map
    # would change the residuals by only ~1e-5, invisible in an 8-bit image.
    for module in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        module.reset_parameters()
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            conv.bias.zero_()


def build_ip_adapter_sd15(target: Path) -> None:
    """An IP-Adapter for the tiny SD 1.5 in the original file layout that diffusers' ``load_ip_adapter``
    reads: ``ip_adapter.safetensors`` (``image_proj.*`` and ``ip_adapter.<n>.to_{k,v}_ip.weight``, n = 1, 3,
    5, ... over the UNet's cross-attention layers) and a CLIP vision encoder in ``image_encoder/``."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    unet: Any = UNet2DConditionModel(
        **_SD15_UNET_SHARED, out_channels=4, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), sample_size=8
    )
    seed_torch(5001)
    encoder = CLIPVisionModelWithProjection(clip_vision_config()).eval()
    target.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(target / "image_encoder", safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    ).save_pretrained(target / "image_encoder")

    cross_dim = unet.config.cross_attention_dim
    embed_dim = encoder.config.projection_dim
    blocks = list(unet.config.block_out_channels)
    seed_torch(5002)
    tensors = {
        "image_proj.proj.weight": torch.randn(4 * cross_dim, embed_dim) * embed_dim**-0.5,
        "image_proj.proj.bias": torch.zeros(4 * cross_dim),
        "image_proj.norm.weight": torch.ones(cross_dim),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        for kind in ("k", "v"):
            tensors[f"ip_adapter.{key_id}.to_{kind}_ip.weight"] = (
                torch.randn(hidden, cross_dim) * cross_dim**-0.5
            )
        key_id += 2
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(target / "ip_adapter.safetensors"))
