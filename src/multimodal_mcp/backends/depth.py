"""Monocular depth estimation (Depth Anything, DPT) through transformers: the depth ControlNet's map
made from a photo."""

from __future__ import annotations

from PIL import Image

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.backends.hf import TransformersModel, load_pretrained
from multimodal_mcp.config import ModelSpec


class DepthEstimator(TransformersModel):
    """A loaded depth-estimation model and its image processor. ``depth_map`` is blocking; it runs
    in a pool worker thread."""

    def depth_map(self, image: Image.Image) -> Image.Image:
        """The depth map of ``image`` (RGB) as depth ControlNets take it: an RGB image of the same
        size, grey levels 0-255, near bright and far dark.

        The model's relative depth (Depth Anything and DPT predict inverse depth: larger is nearer)
        is resized to the picture's size (bicubic) and stretched to the full 0-255 range; a
        prediction with no spread at all gives a black map.
        """
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            predicted = self.model(**inputs).predicted_depth  # (1, h', w')
        depth = torch.nn.functional.interpolate(
            predicted.unsqueeze(1).float(),
            size=(image.height, image.width),
            mode="bicubic",
            align_corners=False,
        )[0, 0]
        low, high = depth.min(), depth.max()
        spread = high - low
        scaled = (depth - low) / spread if float(spread) > 0 else torch.zeros_like(depth)
        grey = (scaled.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return Image.fromarray(grey, mode="L").convert("RGB")


def load_depth(name: str, spec: ModelSpec, ctx: LoadContext) -> DepthEstimator:
    model, processor = load_pretrained(name, spec, ctx, "AutoModelForDepthEstimation")
    return DepthEstimator(name, spec, model, processor, ctx.device)
