"""Zero-shot object detectors (OWLv2, OWL-ViT, Grounding DINO) through transformers'
zero-shot-object-detection API: boxes for objects named in words."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.backends.hf import TransformersModel, load_pretrained
from multimodal_mcp.config import ModelSpec
from multimodal_mcp.handles import Box, Detection

NMS_IOU = 0.5
"""Boxes of one label overlapping a better one by more than this (intersection over union) are
dropped, so one object is counted once."""


class ObjectDetectionModel(TransformersModel):
    """A loaded detector and its processor. ``detect`` is blocking; it runs in a pool worker thread."""

    def detect(self, image: Image.Image, labels: Sequence[str], threshold: float) -> list[Detection]:
        """Boxes in ``image`` (pixels, (left, top, right, bottom)) for any of ``labels`` scoring at
        least ``threshold`` (strictly above, as transformers filters), one per object (per-label
        non-maximum suppression), best first."""
        import torch

        queries = [list(labels)]
        inputs = self.processor(text=queries, images=image, return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        # OWLv2 pads the image to a square at the bottom and right before resizing: boxes are
        # relative to that square. Other detectors resize without padding.
        square = "owlv2" in type(self.model).__name__.lower()
        side = max(image.size)
        size = (side, side) if square else (image.height, image.width)
        found = self.processor.post_process_grounded_object_detection(
            outputs, threshold=threshold, target_sizes=[size], text_labels=queries
        )[0]
        detections = []
        for score, label, box in zip(found["scores"], found["labels"], found["boxes"], strict=True):
            left, top, right, bottom = (float(v) for v in box)
            clipped: Box = (
                max(0.0, left),
                max(0.0, top),
                min(float(image.width), right),
                min(float(image.height), bottom),
            )
            if clipped[2] - clipped[0] >= 1 and clipped[3] - clipped[1] >= 1:
                detections.append(Detection(labels[int(label)], float(score), clipped))
        return suppress(detections, NMS_IOU)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def suppress(detections: Sequence[Detection], threshold: float) -> list[Detection]:
    """Per-label non-maximum suppression: best first, dropping a box that overlaps a kept box of the
    same label with IoU > ``threshold``."""
    kept: list[Detection] = []
    for found in sorted(detections, key=lambda d: d.score, reverse=True):
        if all(k.label != found.label or iou(k.box, found.box) <= threshold for k in kept):
            kept.append(found)
    return kept


def load_detector(name: str, spec: ModelSpec, ctx: LoadContext) -> ObjectDetectionModel:
    model, processor = load_pretrained(name, spec, ctx, "AutoModelForZeroShotObjectDetection")
    return ObjectDetectionModel(name, spec, model, processor, ctx.device)
