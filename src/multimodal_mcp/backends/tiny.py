"""Tiny random-weight checkpoints for running the whole server offline on CPU.

Every model here is an instance of the real diffusers / transformers class with a deliberately tiny config
(hidden sizes around 32, one or two layers) and seeded random weights. Each is written with
``save_pretrained(..., safe_serialization=True)`` so that it loads through exactly the same
``from_pretrained`` code path as a real checkpoint. Outputs are noise; the point is exercising the
plumbing end to end.

All tokenizers are built from hand-written vocabularies, so nothing is ever downloaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, LlamaTokenizer, T5Tokenizer

logger = logging.getLogger(__name__)

TINY_BUILD_VERSION: str = "5"

TINY_MODEL_DIRS: dict[str, str] = {
    "sd15": "sd15",
    "sdxl": "sdxl",
    "flux": "flux",
    "controlnet-canny-sd15": "controlnet-canny-sd15",
    "controlnet-canny-sdxl": "controlnet-canny-sdxl",
    "controlnet-canny-flux": "controlnet-canny-flux",
    "ip-adapter-sd15": "ip-adapter-sd15",
    "clip": "clip",
    "vlm": "vlm",
    "text": "text",
}

BUILD_INFO_FILE = "BUILD_INFO.json"

# Image side length seen by the CLIP and LLaVA vision towers; the processors resize any input to this.
CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
# Vision tokens per image for the VLM: the CLS token is dropped by the "default" feature select strategy.
VLM_IMAGE_TOKENS = (CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE) ** 2

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

# Short common words turned into whole-word tokens; everything else falls back to single characters.
_WORD_TEXT = (
    "a an the and or of in on at to with is are was it this that there here some one two three very "
    "small large big little old new red blue green yellow black white gray dark light bright photo "
    "image picture painting drawing sketch cat dog bird horse fish tree flower house car road sky "
    "sun moon cloud water sea river mountain city street room table chair window door person man "
    "woman child face hand shows show looks like near under over behind front left right top bottom "
    "center background foreground color colors edge edges line lines shape pattern noise blurry "
    "sharp describe what see can you i"
)
_WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_PUNCTUATION = ".,!?'\"-:;()/"
_SPACE = "\u2581"  # SentencePiece word-boundary marker used by the T5 and Llama tokenizers

_VLM_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- message['role'] | upper ~ ': ' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>\\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# A plain-text chat template in the same role-prefixed style (system, user, assistant turns).
_TEXT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- message['role'] | upper ~ ': ' ~ message['content'] ~ '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
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


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    """Leave the caller's global torch RNG state untouched while we reseed it for every model."""
    import torch

    with torch.random.fork_rng(devices=[]):
        yield


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' per-save "Writing model shards" bars; they are noise in server logs."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


# Tokenizers ------------------------------------------------------------------------------------------


def _byte_level_alphabet() -> list[str]:
    """The printable stand-in character for each of the 256 bytes, as used by byte-level BPE."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return [mapping[b] for b in range(256)]


def _left_to_right_merges(symbols: list[str]) -> list[tuple[str, str]]:
    """Merges that glue ``symbols`` together one at a time from the left, ending in the whole word."""
    merges: list[tuple[str, str]] = []
    current = symbols[0]
    for symbol in symbols[1:]:
        merges.append((current, symbol))
        current += symbol
    return merges


def _dedupe(items: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(items))


def _make_clip_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    alphabet = _byte_level_alphabet()
    tokens: list[str] = alphabet + [char + "</w>" for char in alphabet]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        if len(word) > 1:
            merges.extend(_left_to_right_merges([*word[:-1], word[-1] + "</w>"]))
    merges = _dedupe(merges)
    tokens.extend(left + right for left, right in merges)
    tokens.extend(["<|startoftext|>", "<|endoftext|>"])
    vocab = {token: index for index, token in enumerate(_dedupe(tokens))}
    # The tokenizers BPE model takes merge pairs as tuples, although the transformers hint says strings.
    return CLIPTokenizer(vocab=vocab, merges=cast(Any, merges), model_max_length=CLIP_MAX_LENGTH)


def _make_t5_tokenizer() -> T5Tokenizer:
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (_SPACE, -2.0)]
    pieces += [(char, -6.0) for char in _LETTERS + _PUNCTUATION]
    pieces += [(_SPACE + char, -5.0) for char in _LETTERS]
    # Whole words are cheaper than their characters, so the Unigram model prefers them.
    pieces += [(_SPACE + word, -3.0 - 0.001 * rank) for rank, word in enumerate(_WORDS) if len(word) > 1]
    return T5Tokenizer(vocab=_dedupe(pieces), extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _make_llama_tokenizer() -> LlamaTokenizer:
    from transformers import LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    # "\n" is a plain token because there are no byte-fallback tokens; chat prompts contain newlines.
    tokens: list[str] = [*specials, _SPACE, "\n", *_LETTERS, *_PUNCTUATION]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        merges.extend(_left_to_right_merges([_SPACE, *word]))
        capitalised = word.capitalize()
        if capitalised != word:
            merges.extend(_left_to_right_merges([_SPACE, *capitalised]))
    merges = _dedupe(merges)
    tokens.extend(left + right for left, right in merges)
    vocab = {token: index for index, token in enumerate(_dedupe(tokens))}
    return LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        image_token="<image>",
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=512,
    )


def _make_clip_image_processor() -> Any:
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    )


# Shared model pieces ---------------------------------------------------------------------------------


def _clip_text_config(tokenizer: CLIPTokenizer, **overrides: Any) -> Any:
    from transformers import CLIPTextConfig

    settings: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": CLIP_MAX_LENGTH,
        "projection_dim": 32,
        "hidden_act": "quick_gelu",
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    settings.update(overrides)
    return CLIPTextConfig(**settings)


def _clip_vision_config() -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=CLIP_IMAGE_SIZE,
        patch_size=CLIP_PATCH_SIZE,
        projection_dim=32,
        hidden_act="quick_gelu",
    )


def _make_vae(seed: int, **overrides: Any) -> Any:
    from diffusers import AutoencoderKL

    _seed(seed)
    return AutoencoderKL(**{**_VAE_BLOCKS, **overrides})


def _make_clip_text_encoder(seed: int, tokenizer: CLIPTokenizer, with_projection: bool = False) -> Any:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    _seed(seed)
    return model_class(_clip_text_config(tokenizer)).eval()


# Per-model builders ----------------------------------------------------------------------------------


def _build_sd15(target: Path) -> None:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _make_clip_tokenizer()
    _seed(1501)
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
        text_encoder=_make_clip_text_encoder(1503, tokenizer),
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

    tokenizer = _make_clip_tokenizer()
    text_encoder = _make_clip_text_encoder(2001, tokenizer)
    text_encoder_2 = _make_clip_text_encoder(2002, tokenizer, with_projection=True)
    time_embed_dim = 8
    _seed(2003)
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


def _build_sdxl(target: Path) -> None:
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

    _seed(3004)
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


def _build_controlnet_canny_flux(target: Path) -> None:
    import torch
    from diffusers import FluxControlNetModel

    # The tiny Flux's CLIP and T5 widths are both 32; its latents have 16 channels.
    transformer = _flux_transformer(32, 32, 16)
    _seed(4003)
    controlnet: Any = FluxControlNetModel.from_transformer(
        transformer, num_layers=1, num_single_layers=0, attention_head_dim=16, num_attention_heads=2
    )
    # Zero-initialised outputs would make the ControlNet a no-op; give them ordinary random weights.
    with torch.no_grad():
        for module in [*controlnet.controlnet_blocks, controlnet.controlnet_x_embedder]:
            module.reset_parameters()
    controlnet.save_pretrained(target, safe_serialization=True)


def _build_flux(target: Path) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import T5Config, T5EncoderModel

    clip_tokenizer = _make_clip_tokenizer()
    t5_tokenizer = _make_t5_tokenizer()
    text_encoder = _make_clip_text_encoder(3001, clip_tokenizer)

    _seed(3002)
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


def _build_controlnet_canny_sd15(target: Path) -> None:
    from diffusers import ControlNetModel

    _seed(4001)
    controlnet: Any = ControlNetModel(
        **_SD15_UNET_SHARED,
        conditioning_channels=3,
        # Three stride-2 convolutions: the conditioning image is downsampled by 8, matching the sd15 VAE.
        conditioning_embedding_out_channels=(8, 16, 16, 32),
    )
    _make_controlnet_effective(controlnet)
    controlnet.save_pretrained(target, safe_serialization=True)


def _build_controlnet_canny_sdxl(target: Path) -> None:
    from diffusers import ControlNetModel

    unet = _sdxl_parts()[3]
    _seed(4002)
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


def _build_ip_adapter_sd15(target: Path) -> None:
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
    _seed(5001)
    encoder = CLIPVisionModelWithProjection(_clip_vision_config()).eval()
    target.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(target / "image_encoder", safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
    ).save_pretrained(target / "image_encoder")

    cross_dim = unet.config.cross_attention_dim
    embed_dim = encoder.config.projection_dim
    blocks = list(unet.config.block_out_channels)
    _seed(5002)
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


def _build_clip(target: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = _make_clip_tokenizer()
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config=_clip_vision_config().to_dict(),
        projection_dim=32,
    )
    _seed(5001)
    model = CLIPModel(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    CLIPProcessor(image_processor=_make_clip_image_processor(), tokenizer=tokenizer).save_pretrained(target)


def _build_vlm(target: Path) -> None:
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _make_llama_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if not isinstance(image_token_id, int):
        raise TypeError(f"expected a single id for <image>, got {image_token_id!r}")
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=_clip_vision_config().to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=VLM_IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    _seed(6001)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(target, safe_serialization=True)

    processor = LlavaProcessor(
        image_processor=_make_clip_image_processor(),
        tokenizer=tokenizer,
        patch_size=CLIP_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLIP CLS token, removed again by the "default" strategy
        image_token="<image>",
        chat_template=_VLM_CHAT_TEMPLATE,
    )
    processor.save_pretrained(target)


def _build_text(target: Path) -> None:
    """A Llama-architecture chat model for prompt rewriting: a causal LM and a tokenizer with a chat
    template, as a real instruct checkpoint ships them."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _make_llama_tokenizer()
    tokenizer.chat_template = _TEXT_CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Ten times the usual init scale: with the default the tiny model gives one answer whatever it
        # is asked; with this, different prompts get different (nonsense) rewrites.
        initializer_range=0.2,
    )
    _seed(7001)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "sd15": _build_sd15,
    "sdxl": _build_sdxl,
    "flux": _build_flux,
    "controlnet-canny-sd15": _build_controlnet_canny_sd15,
    "controlnet-canny-sdxl": _build_controlnet_canny_sdxl,
    "controlnet-canny-flux": _build_controlnet_canny_flux,
    "ip-adapter-sd15": _build_ip_adapter_sd15,
    "clip": _build_clip,
    "vlm": _build_vlm,
    "text": _build_text,
}


# Public API ------------------------------------------------------------------------------------------


def build_tiny_model(name: str, target: Path) -> Path:
    """Build the single tiny model ``name`` (a key of ``TINY_MODEL_DIRS``) directly into ``target``.

    ``target`` must not exist yet or be empty. Builds are deterministic: the same name always produces
    byte-identical safetensors files. The caller's global torch RNG state is preserved.
    """
    if name not in _BUILDERS:
        raise KeyError(f"unknown tiny model {name!r}; expected one of {sorted(_BUILDERS)}")
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"refusing to build tiny model into non-empty directory {target}")
    target.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _isolated_rng(), _quiet_progress_bars():
        _BUILDERS[name](target)
    logger.debug("built tiny model %s in %.2fs", name, time.perf_counter() - started)
    return target


def build_tiny_models(root: Path) -> Path:
    """Build every tiny model under ``root`` and return ``root``.

    Everything is built in a temporary sibling directory and then renamed into place, so ``root`` is either
    absent, the previous complete build, or the new complete build, never something half written.
    ``root/BUILD_INFO.json`` is the last file written. An existing ``root`` is replaced only if it holds
    nothing but a previous tiny-model build (guarding against deleting an unrelated directory).
    """
    import diffusers
    import torch
    import transformers

    root = Path(root)
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.with_name(f".{root.name}.building-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    started = time.perf_counter()
    logger.info("building tiny models into %s", root)
    try:
        staging.mkdir()
        for name, subdir in TINY_MODEL_DIRS.items():
            build_tiny_model(name, staging / subdir)
        info = {
            "version": TINY_BUILD_VERSION,
            "models": TINY_MODEL_DIRS,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        }
        (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _swap_into_place(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built tiny models in %.1fs", time.perf_counter() - started)
    return root


def ensure_tiny_models(root: Path) -> Path:
    """Return ``root`` once it holds a tiny-model build of the current ``TINY_BUILD_VERSION``.

    Builds (or rebuilds) only when needed. Concurrent callers, in threads or separate processes, serialise on
    an exclusive ``fcntl.flock`` of ``<root>.lock`` next to ``root`` and re-check after acquiring it, so the
    models are built at most once.
    """
    root = Path(root)
    if _is_current(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    lock_path = root.with_name(root.name + ".lock")
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            if _is_current(root):
                return root
            return build_tiny_models(root)
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _is_current(root: Path) -> bool:
    try:
        info = json.loads((root / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("version") == TINY_BUILD_VERSION


def _check_replaceable(root: Path) -> None:
    """Refuse to replace an existing ``root`` that holds anything besides a previous tiny-model build."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    expected = {*TINY_MODEL_DIRS.values(), BUILD_INFO_FILE}
    unexpected = sorted(entry.name for entry in root.iterdir() if entry.name not in expected)
    if unexpected:
        raise FileExistsError(f"{root} exists and holds files that are not tiny models: {unexpected[:5]}")


def _swap_into_place(staging: Path, root: Path) -> None:
    if not root.exists():
        os.replace(staging, root)
        return
    _check_replaceable(root)
    # A directory cannot be atomically replaced by another non-empty one, so move the old build aside first.
    retired = root.with_name(f".{root.name}.retired-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(root, retired)
    os.replace(staging, root)
    shutil.rmtree(retired, ignore_errors=True)
