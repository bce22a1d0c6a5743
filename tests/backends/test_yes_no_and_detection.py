"""The tiny VLM's P(yes) and the tiny OWLv2 detector, loaded through the registry like real models."""

from __future__ import annotations

import math
from pathlib import Path

from multimodal_mcp import registry
from multimodal_mcp.backends.base import LoadContext
from multimodal_mcp.backends.detector import NMS_IOU, iou, suppress
from multimodal_mcp.config import Config
from multimodal_mcp.handles import Detection

from helpers import photo


def _load(config: Config, tiny_dir: Path, name: str) -> object:
    spec = config.models[name]
    backend = registry.get(spec.backend)
    assert isinstance(backend, registry.LocalBackend)
    return backend.load(name, spec, LoadContext("cpu", tiny_dir))


def test_p_yes_is_the_likelihood_of_yes_over_yes_and_no_as_the_model_scores_the_answers(
    config: Config, tiny_dir: Path
) -> None:
    import torch

    model = _load(config, tiny_dir, "tiny-vlm")
    image = photo(size=64)
    question = "Is there a dog in the image? Answer yes or no."
    p = model.yes_probability(image, question)

    # Independently: each answer's log-likelihood from the model's own loss over the answer tokens.
    def log_likelihood(answer: str) -> float:
        prompt = model.processor(
            images=model.fit(image), text=model._prompt(question, 1), return_tensors="pt"
        )
        ids = model.processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
        input_ids = torch.cat([prompt["input_ids"], ids], dim=1)
        labels = torch.full_like(input_ids, -100)
        labels[:, -ids.shape[1] :] = ids
        with torch.inference_mode():
            out = model.model(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=prompt["pixel_values"],
                labels=labels,
            )
        return -float(out.loss) * ids.shape[1]

    expected = 1 / (1 + math.exp(log_likelihood("No") - log_likelihood("Yes")))
    assert math.isclose(p, expected, rel_tol=1e-4, abs_tol=1e-6)
    assert 0.0 < p < 1.0
    assert model.yes_probability(image, question) == p  # deterministic
    assert model.yes_probability(image, "Is the sky green? Answer yes or no.") != p


def test_the_tiny_detector_returns_boxes_inside_the_image_for_the_queries_one_per_object(
    config: Config, tiny_dir: Path
) -> None:
    model = _load(config, tiny_dir, "tiny-owlv2")
    image = photo(size=None).resize((96, 64))
    labels = ["a photo of a cat", "a photo of a dog"]
    found = model.detect(image, labels, 0.0)
    assert found, "a random detector with threshold 0 finds something"
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    for d in found:
        assert d.label in labels
        left, top, right, bottom = d.box
        assert 0 <= left < right <= 96 and 0 <= top < bottom <= 64
    for a in found:
        for b in found:
            if a is not b and a.label == b.label:
                assert iou(a.box, b.box) <= NMS_IOU
    # A higher threshold keeps exactly the boxes that score at least that much.
    cut = found[len(found) // 2].score - 1e-6  # transformers keeps scores strictly above the threshold
    assert [d for d in model.detect(image, labels, cut) if d.score >= cut] == [
        d for d in found if d.score >= cut
    ]
    assert all(d.score >= cut for d in model.detect(image, labels, cut))


def test_suppression_keeps_the_best_box_of_overlapping_ones_per_label() -> None:
    boxes = [
        Detection("cat", 0.5, (0, 0, 10, 10)),
        Detection("cat", 0.9, (1, 1, 11, 11)),  # IoU with the first 81/119 = 0.68
        Detection("dog", 0.4, (0, 0, 10, 10)),  # same place, other label: kept
        Detection("cat", 0.3, (20, 20, 30, 30)),  # apart: kept
    ]
    assert suppress(boxes, 0.5) == [boxes[1], boxes[2], boxes[3]]
    assert math.isclose(iou(boxes[0].box, boxes[1].box), 81 / 119)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
