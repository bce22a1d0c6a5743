"""Tiny random-weight transformers pieces: hand-written tokenizers, CLIP/Llama configs, and the CLIP,
VLM (LLaVA), text (Llama chat), detector (OWLv2) and depth (Depth Anything) checkpoints.

The diffusion builders in :mod:`multimodal_mcp.backends.tiny_diffusion` reuse the tokenizers and CLIP text
encoders from here. All tokenizers are built from hand-written vocabularies, so nothing is ever downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, LlamaTokenizer, T5Tokenizer


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


def torch_no_grad() -> Any:
    import torch

    return torch.no_grad()


def seed_torch(value: int) -> None:
    """Reseed the global torch RNG before creating a model (builds run inside a forked RNG state)."""
    import torch

    torch.manual_seed(value)


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


def make_clip_tokenizer() -> CLIPTokenizer:
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


def make_t5_tokenizer() -> T5Tokenizer:
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


def clip_vision_config() -> Any:
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


def make_clip_text_encoder(seed: int, tokenizer: CLIPTokenizer, with_projection: bool = False) -> Any:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    seed_torch(seed)
    return model_class(_clip_text_config(tokenizer)).eval()


# Per-model builders ----------------------------------------------------------------------------------


def build_clip(target: Path) -> None:
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tokenizer = make_clip_tokenizer()
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config=clip_vision_config().to_dict(),
        projection_dim=32,
    )
    seed_torch(5001)
    model = CLIPModel(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    CLIPProcessor(image_processor=_make_clip_image_processor(), tokenizer=tokenizer).save_pretrained(target)


def build_vlm(target: Path) -> None:
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
        vision_config=clip_vision_config().to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=VLM_IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    seed_torch(6001)
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


def build_text(target: Path) -> None:
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
    seed_torch(7001)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def build_detector(target: Path) -> None:
    """An OWLv2 zero-shot object detector (CLIP-style text and vision towers, box and class heads) on
    64 px square inputs: 16 patches, so at most 16 boxes per image."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor

    tokenizer = make_clip_tokenizer()
    config = Owlv2Config(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    seed_torch(8001)
    model = Owlv2ForObjectDetection(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    image_processor = Owlv2ImageProcessorPil(size={"height": 64, "width": 64})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)


def build_depth(target: Path) -> None:
    """A Depth Anything depth estimator (DINOv2 backbone, DPT head) on 56 px inputs (4x4 patches of 14
    px), with the image processor Depth Anything V2 ships: aspect kept, sides multiples of 14."""
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        DPTImageProcessorPil,
    )

    backbone = {  # a DINOv2 (Dinov2Config's fields)
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "mlp_ratio": 2,
        "image_size": 56,
        "patch_size": 14,
        "out_features": ["stage1", "stage2", "stage3", "stage4"],
        "reshape_hidden_states": False,
    }
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
    )
    seed_torch(9001)
    model = DepthAnythingForDepthEstimation(config).eval()
    model.save_pretrained(target, safe_serialization=True)
    DPTImageProcessorPil(
        size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14
    ).save_pretrained(target)


# Qwen2-VL: several images per question, each between <|vision_start|> and <|vision_end|>.
QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_IMAGE_SIZE = 56  # 4x4 patches of 14 px, merged 2x2: 4 image tokens per picture
_QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _make_qwen_tokenizer() -> Any:
    """A byte-level BPE tokenizer in Qwen2's form (``Ġ`` marks a leading space), whole-word merges for
    the common words, and Qwen2-VL's special tokens."""
    from transformers import Qwen2Tokenizer

    alphabet = _byte_level_alphabet()
    space = alphabet[ord(" ")]
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        merges.extend(_left_to_right_merges([space, *word]))
        capitalised = word.capitalize()
        if capitalised != word:
            merges.extend(_left_to_right_merges([space, *capitalised]))
    merges = _dedupe(merges)
    tokens = _dedupe([*alphabet, *(left + right for left, right in merges), *QWEN_SPECIALS])
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=cast(Any, merges),
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIALS[1:]),
        model_max_length=1024,
    )
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    return tokenizer


def build_qwen2_vl(target: Path) -> None:
    """A Qwen2-VL vision-language model (a one-layer ViT with 2x2 patch merging, a two-layer Qwen2
    text model with multimodal rotary positions) and its processor, which takes several images per
    question: each image is ``QWEN_IMAGE_SIZE`` px square after its processor, so 4 image tokens."""
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = _make_qwen_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 4,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    seed_torch(6101)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]
    )
    model.save_pretrained(target, safe_serialization=True)
    pixels = QWEN_IMAGE_SIZE * QWEN_IMAGE_SIZE
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    # The processor's parts as Qwen2VLProcessor.save_pretrained writes them. (transformers builds a
    # Qwen2VLProcessor only with its video processor, which needs torchvision, not a dependency here.)
    image_processor.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "chat_template.jinja").write_text(_QWEN_CHAT_TEMPLATE)
    (target / "processor_config.json").write_text(
        json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2) + "\n"
    )


def build_siglip(target: Path) -> None:
    """A SigLIP dual encoder (sigmoid loss: a learnt logit bias), with the hand-written CLIP tokenizer
    and a 16-token text window (SigLIP pads every text to its window) on 32 px images."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    tokenizer = make_clip_tokenizer()
    tokenizer.model_max_length = 16
    config = SiglipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": CLIP_IMAGE_SIZE,
            "patch_size": CLIP_PATCH_SIZE,
        },
    )
    seed_torch(5101)
    model = SiglipModel(config).eval()
    with torch_no_grad():
        model.logit_bias.fill_(-2.0)  # real SigLIP starts at -10: most pairs are negatives
    model.save_pretrained(target, safe_serialization=True)
    image_processor = SiglipImageProcessorPil(size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)
