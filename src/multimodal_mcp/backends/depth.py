"""Monocular depth estimation (Depth Anything, DPT) through transformers: the depth ControlNet's map
made from a photo."""

from __future__ import annotations

from PIL import Image

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.backends.hf import TransformersModel, load_pretrained
from multimodal_mcp.config import ModelSpec

MAX_ASPECT = 2
"""Pictures are estimated at no thinner than 1:2 (see :meth:`DepthEstimator.depth_map`)."""


class DepthEstimator(TransformersModel):
    """A loaded depth-estimation model and its image processor. ``depth_map`` is blocking; it runs
    in a pool worker thread."""

    def depth_map(self, image: Image.Image) -> Image.Image:
        """The depth map of ``image`` (RGB) as depth ControlNets take it: an RGB image of the same
        size, grey levels 0-255, near bright and far dark.

        The model's relative depth (Depth Anything and DPT predict inverse depth: larger is nearer)
        is resized to the picture's size (bicubic; a picture thinner than 1:2 is estimated padded
        to that shape with its edge pixels, and the padding cut off again) and stretched to the
        full 0-255 range; a prediction with no spread at all gives a black map.
        """
        import numpy as np
        import torch

        # A strip thinner than 1:MAX_ASPECT is padded (its edge pixels repeated) to that shape first:
        # the processors keep the aspect ratio, and a thin side would round to no patch at all.
        pixels = np.asarray(image.convert("RGB"))
        height, width = pixels.shape[:2]
        pad_h = max(0, -(-width // MAX_ASPECT) - height)
        pad_w = max(0, -(-height // MAX_ASPECT) - width)
        top, left = pad_h // 2, pad_w // 2
        padded = np.pad(pixels, ((top, pad_h - top), (left, pad_w - left), (0, 0)), mode="edge")
        inputs = self.processor(images=Image.fromarray(padded), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            predicted = self.model(**inputs).predicted_depth  # (1, h', w')
        depth = torch.nn.functional.interpolate(
            predicted.unsqueeze(1).float(), size=padded.shape[:2], mode="bicubic", align_corners=False
        )[0, 0, top : top + height, left : left + width]
        low, high = depth.min(), depth.max()
        spread = high - low
        scaled = (depth - low) / spread if float(spread) > 0 else torch.zeros_like(depth)
        grey = (scaled.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return Image.fromarray(grey, mode="L").convert("RGB")


def load_depth(name: str, spec: ModelSpec, ctx: LoadContext) -> DepthEstimator:
    model, processor = load_pretrained(name, spec, ctx, "AutoModelForDepthEstimation")
    return DepthEstimator(name, spec, model, processor, ctx.device)
