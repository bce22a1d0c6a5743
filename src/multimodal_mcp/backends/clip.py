"""CLIP-style dual encoders: zero-shot classification and image embeddings.

SigLIP (trained with a sigmoid loss, so it has a logit bias) scores each label on its own:
``sigmoid(scale * cos + bias)``; CLIP's scores are a softmax over the labels given. SigLIP's text
tower was trained on texts padded to its full window and reads the last position, so its texts are
padded to ``max_length`` here, as its model card says.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.backends.hf import TransformersModel, load_pretrained
from multimodal_mcp.config import ModelSpec


class ClipModel(TransformersModel):
    """A loaded CLIP model and its processor. Methods are blocking; they run in pool worker threads."""

    @property
    def sigmoid(self) -> bool:
        """True for sigmoid-loss models (SigLIP: they have a logit bias): labels scored independently."""
        return getattr(self.model, "logit_bias", None) is not None

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """L2-normalised text embeddings of a batch, shape (n, dim), float32 on the CPU."""
        import torch

        padding = "max_length" if self.sigmoid else True
        inputs = self.processor(text=texts, return_tensors="pt", padding=padding, truncation=True).to(
            self.device
        )
        with torch.inference_mode():
            features = self.model.get_text_features(**inputs)
        return _unit_vectors(features)

    def logit_parameters(self) -> tuple[float, float]:
        """(scale, bias) that turn cosine similarities into the model's logits."""
        scale = float(self.model.logit_scale.detach().exp())
        bias = getattr(self.model, "logit_bias", None)
        return scale, float(bias.detach()) if bias is not None else 0.0

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings of a batch, shape (n, dim), float32 on the CPU."""
        import torch

        inputs = self.processor(images=[self.fit(image) for image in images], return_tensors="pt").to(
            self.device
        )
        with torch.inference_mode():
            features = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.model.dtype))
        return _unit_vectors(features)


def _unit_vectors(features: Any) -> np.ndarray:
    """L2-normalised rows as float32 on the CPU. transformers 5 returns the projected features
    either as a tensor or as the pooled output of a model output object."""
    import torch

    if not isinstance(features, torch.Tensor):
        features = features.pooler_output
    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return np.asarray(features.cpu().numpy(), dtype=np.float32)


def load_clip(name: str, spec: ModelSpec, ctx: LoadContext) -> ClipModel:
    model, processor = load_pretrained(name, spec, ctx, "AutoModel")
    return ClipModel(name, spec, model, processor, ctx.device)
